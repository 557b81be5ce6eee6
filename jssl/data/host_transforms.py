"""Host-side (grain) per-record transforms: decoding and the geometric part of augmentation.

Photometric augmentation (colour jitter, blur, solarize, ...) runs on the device inside the
train step; here we only decode and crop/resize/flip, which changes shapes and is cheap on the
host. Records are dicts with ``image`` -- a uint8 (H, W[, C]) array or encoded PNG/JPEG bytes --
and ``label``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import grain.python as grain
import numpy as np
from PIL import Image

__all__ = ["DecodeImage", "RandomResizedCrop", "decode_image", "sample_crop_box"]


def decode_image(image: Any) -> np.ndarray:
    """uint8 (H, W, C) array from an array or from encoded image bytes (Pillow)."""
    if isinstance(image, bytes | bytearray):
        with Image.open(io.BytesIO(image)) as im:
            image = np.asarray(im)
    return _with_channels(np.asarray(image), batched=False)


def _with_channels(images: np.ndarray, *, batched: bool) -> np.ndarray:
    """uint8 ``(H, W, C)`` (``batched``: ``(B, H, W, C)``) images, a missing C axis added."""
    what = "a batch of (H, W[, C]) images" if batched else "an (H, W) or (H, W, C) image"
    if images.dtype != np.uint8:
        raise ValueError(f"expected {what} of uint8, got {images.dtype}")
    ndim = 4 if batched else 3
    if images.ndim == ndim - 1:
        images = images[..., None]
    if images.ndim != ndim:
        raise ValueError(f"expected {what}, got shape {images.shape}")
    return images


def _convert(image: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return image
    if dtype == "float32":
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")


@dataclasses.dataclass(frozen=True)
class DecodeImage(grain.MapTransform):
    """``{"image", "label", ...}`` -> ``{"image": (H, W, C) float32 in [0, 1] | uint8, "label"}``.

    ``dtype="uint8"`` ships raw bytes to the device (4x less host->device traffic); convert there.
    """

    dtype: str = "float32"

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        image = _convert(decode_image(record["image"]), self.dtype)
        return {"image": image, "label": np.int32(record["label"])}

    def map_batch(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """``map`` of every record of a stacked batch, stacked (what grain's Batch makes)."""
        images = np.asarray(batch["image"])
        if images.dtype == object:  # encoded bytes
            images = np.stack([decode_image(x) for x in images])
        return {"image": _convert(_with_channels(images, batched=True), self.dtype),
                "label": np.asarray(batch["label"]).astype(np.int32)}


def sample_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Inception-style crop ``(top, left, h, w)``: area fraction in ``scale``, aspect in ``ratio``.

    Same rule as torchvision's ``RandomResizedCrop``: up to ``attempts`` draws with area
    uniform in ``scale`` and log-uniform aspect ratio, else the largest centred crop whose
    aspect ratio is clipped into ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` and resize to ``size``x``size`` (bilinear, antialiased) per channel."""
    top, left, h, w = box
    channels = []
    for c in range(image.shape[-1]):
        im = Image.fromarray(np.ascontiguousarray(image[..., c]))
        im = im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        channels.append(np.asarray(im))
    return np.stack(channels, axis=-1)


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.RandomMapTransform):
    """``num_views`` independent random-resized crops (+ horizontal flips) of one image.

    Output: ``{"views": (num_views, size, size, C) float32 in [0, 1] | uint8, "label"}``. The
    randomness is grain's per-record generator, which is derived from the loader seed and the
    record's position in the stream, so a resumed iterator reproduces the same crops.
    """

    size: int
    num_views: int = 2
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        if self.size <= 0 or self.num_views <= 0:
            raise ValueError(f"size and num_views must be positive: {self.size}, {self.num_views}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = decode_image(record["image"])
        height, width = image.shape[:2]
        views = []
        for _ in range(self.num_views):
            box = sample_crop_box(height, width, rng, self.scale, self.ratio)
            view = _crop_resize(image, box, self.size)
            if self.flip and rng.random() < 0.5:
                view = view[:, ::-1]
            views.append(view)
        return {"views": _convert(np.stack(views), self.dtype), "label": np.int32(record["label"])}
