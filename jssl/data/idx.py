"""Read IDX files (the MNIST / Fashion-MNIST container format) into NumPy, with full validation.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then exactly ``prod(dims)`` elements of that dtype, big-endian, row major.
Files may be raw or gzip-compressed (detected from the gzip header, not from the file name).

Every defect raises an error naming the file and what is wrong: a corrupt or truncated gzip
stream (``OSError``), a bad magic number, unexpected dimensions, or a payload that is not exactly
the byte count the header promises (``ValueError``). No partial array is ever returned.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "parse_idx", "read_idx", "read_idx_images", "read_idx_labels", "write_idx"]

# IDX type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the decompressed content of ``path``; a broken gzip stream raises ``OSError``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise OSError(
            f"{path}: corrupt or truncated gzip stream ({len(raw)} compressed bytes): {e}"
        ) from e


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an in-memory IDX payload; ``name`` is used in error messages."""
    if len(data) < 4:
        raise ValueError(f"{name}: file has {len(data)} bytes, too short for the 4-byte IDX magic")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with type "
            f"TT in {{{', '.join(f'{c:02x}' for c in IDX_DTYPES)}}} and NN >= 1 dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{name}: truncated header: {ndim} dimensions need {header_len} header bytes, "
            f"got {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise ValueError(
            f"{name}: {what}: header says shape {dims} of {dtype.name}, expected {expected} bytes "
            f"of pixel data, got {got}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read any IDX file (raw or gzip) into a native-endian NumPy array of its stored dtype."""
    path = Path(path)
    return parse_idx(_read_bytes(path), name=str(path))


def read_idx_images(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an ``idx3-ubyte`` image file into a ``(N, H, W)`` uint8 array.

    Args:
      path: the file (``.gz`` or raw).
      shape: expected ``(H, W)``; ``None`` accepts any.
    """
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected a 3-d uint8 image file (magic 0x00000803), "
            f"got {images.ndim}-d {images.dtype}"
        )
    if shape is not None and images.shape[1:] != tuple(shape):
        raise ValueError(f"{path}: expected images of shape {tuple(shape)}, got {images.shape[1:]}")
    return images


def read_idx_labels(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """Read an ``idx1-ubyte`` label file into an ``(N,)`` int64 array.

    Args:
      path: the file (``.gz`` or raw).
      num_classes: if given, every label must lie in ``[0, num_classes)``.
    """
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected a 1-d uint8 label file (magic 0x00000801), "
            f"got {labels.ndim}-d {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise ValueError(
            f"{path}: label {labels[bad]} at index {bad} is outside [0, {num_classes})"
        )
    return labels


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip when ``compress`` or (if None) the name ends in .gz."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): c for c, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[codes[native]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
