"""Fashion-MNIST offline, through the same ``tfds.data_source`` path as any real-scale dataset.

``FashionMnistLocal`` is a TFDS ``GeneratorBasedBuilder`` (registered as ``fashion_mnist_local``)
with the features of TFDS's own ``fashion_mnist`` -- ``image``: (28, 28, 1) uint8 PNG,
``label``: ``ClassLabel`` with the 10 names -- whose splits are generated from the IDX files of
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), passed as
TFDS's ``manual_dir``. Records keep the IDX order (``disable_shuffling``): record ``i`` of
``train`` is image ``i`` of ``train-images-idx3-ubyte.gz``.

``prepare_fashion_mnist`` builds it once per machine as array_record. TFDS writes into a
``incomplete.*`` temp dir and renames it on success (``tfds.core.utils.incomplete_dir``), so a
crashed or killed build never leaves a directory that looks complete; leftover temp dirs are
removed before the next attempt, under a file lock that also serialises concurrent builds.
Images are PNG-encoded with Pillow, so neither building nor reading imports TensorFlow.

Command line (prepare once per machine)::

  python -m jssl.data.fashion_mnist [--data_dir DIR] [--idx_dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jssl.data.idx import read_idx_images, read_idx_labels

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_IDX_DIR",
    "FashionMnistLocal",
    "IDX_FILES",
    "NAME",
    "SPLIT_SIZES",
    "default_data_dir",
    "prepare_fashion_mnist",
]

NAME = "fashion_mnist_local"
DEFAULT_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# split -> (images file, labels file)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}  # of the full dataset; small test sets differ
INSTALL_HELP = (
    "Fashion-MNIST is not available offline. Install it with:\n"
    "  apt-get update && apt-get install -y dataset-fashion-mnist\n"
    "(IDX files in /usr/share/datasets/fashion-mnist), then run:\n"
    "  python -m jssl.data.fashion_mnist"
)
TF_HELP = (
    "Building TFDS's own 'fashion_mnist' needs TensorFlow:\n"
    "  pip install tensorflow-cpu==2.21.0"
)


def default_data_dir() -> Path:
    """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (TFDS's own default)."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _png(image: np.ndarray) -> bytes:
    """PNG-encode one (H, W, 1) uint8 image with Pillow (lossless, no TensorFlow)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., 0])).save(buf, format="PNG")
    return buf.getvalue()


def _idx_paths(idx_dir: Path, split: str) -> tuple[Path, Path]:
    images, labels = IDX_FILES[split]
    return idx_dir / images, idx_dir / labels


def idx_files_present(idx_dir: str | os.PathLike) -> bool:
    """Whether all four Fashion-MNIST IDX files exist in ``idx_dir``."""
    return all(p.is_file() for s in IDX_FILES for p in _idx_paths(Path(idx_dir), s))


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (Xiao et al. 2017) from local IDX files; features as TFDS ``fashion_mnist``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from the Debian dataset-fashion-mnist IDX files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTALL_HELP

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST: 28x28 grayscale Zalando article images, 10 classes.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        idx_dir = Path(dl_manager.manual_dir)
        missing = [p for s in IDX_FILES for p in _idx_paths(idx_dir, s) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"missing Fashion-MNIST IDX files: {', '.join(map(str, missing))}\n{INSTALL_HELP}"
            )
        return {split: self._generate_examples(*_idx_paths(idx_dir, split)) for split in IDX_FILES}

    def _generate_examples(self, images_path: Path, labels_path: Path):
        """Yields ``(index, {"image": png bytes, "label": int})`` in IDX order."""
        images = read_idx_images(images_path, shape=(28, 28))
        labels = read_idx_labels(labels_path, num_classes=len(CLASS_NAMES))
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has "
                f"{len(labels)} labels"
            )
        for i in range(len(images)):
            yield i, {"image": _png(images[i][..., None]), "label": int(labels[i])}


@contextlib.contextmanager
def _build_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Exclusive ``flock`` on ``<data_dir>/.<name>.lock``: one build per data dir at a time.

    Several processes on one host (one per accelerator) may call ``prepare_fashion_mnist``
    together; the first builds, the others wait and then reuse its result.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f".{name.replace('/', '-')}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_locked(name: str, data_dir: Path, **prepare_kwargs: Any) -> tfds.core.DatasetBuilder:
    """Build ``name`` in ``data_dir`` unless already complete, holding the build lock.

    Under the lock, any ``incomplete.*`` temp dir of this dataset was left by a killed build
    (TFDS removes its temp dir itself on an exception), so it is deleted before building.
    """
    with _build_lock(data_dir, name):
        builder = tfds.builder(name, data_dir=data_dir)  # made under the lock: sees others' builds
        if not builder.is_prepared():
            version_dir = Path(builder.data_dir)
            for stale in version_dir.parent.glob(f"incomplete.*_{version_dir.name}"):
                shutil.rmtree(stale)
            builder.download_and_prepare(file_format="array_record", **prepare_kwargs)
    return builder


def prepare_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike = DEFAULT_IDX_DIR,
    *,
    allow_download: bool = True,
) -> tfds.core.DatasetBuilder:
    """Build Fashion-MNIST as array_record in ``data_dir`` once; return its builder.

    Order: a complete ``fashion_mnist_local`` build already in ``data_dir`` is used as is
    (a copied data dir needs no IDX files); else (a) the IDX files in ``idx_dir`` exist ->
    build ``fashion_mnist_local`` from them;
    (b) else TFDS's own ``fashion_mnist`` download; (c) else raise ``RuntimeError`` with the
    install commands. Idempotent: an existing complete build is reused as is. Read it with
    ``tfds.data_source(builder.name, split=..., data_dir=data_dir)``.

    Args:
      data_dir: TFDS data dir; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      idx_dir: folder with the four ``*-ubyte.gz`` IDX files.
      allow_download: permit fallback (b).
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    idx_dir = Path(idx_dir)
    if (data_dir / NAME / str(FashionMnistLocal.VERSION) / "dataset_info.json").is_file():
        prebuilt = tfds.builder(NAME, data_dir=data_dir)
        if prebuilt.is_prepared():
            return prebuilt
    if idx_files_present(idx_dir):
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(idx_dir))
        return _prepare_locked(NAME, data_dir, download_config=config)
    errors = [f"(a) no IDX files in {idx_dir}"]
    if allow_download:
        try:
            return _prepare_locked("fashion_mnist", data_dir)
        except Exception as e:  # noqa: BLE001 - any failure means: fall through to (c)
            errors.append(f"(b) TFDS download of 'fashion_mnist' failed: {type(e).__name__}: {e}")
    if importlib.util.find_spec("tensorflow") is None:  # find, not import: TF takes seconds
        errors.append(TF_HELP)
    raise RuntimeError("\n".join([*errors, INSTALL_HELP]))


def main(argv: list[str] | None = None) -> int:
    """CLI: build Fashion-MNIST into the TFDS data dir and print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir", default=None, help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets"
    )
    parser.add_argument("--idx_dir", default=os.fspath(DEFAULT_IDX_DIR))
    args = parser.parse_args(argv)
    builder = prepare_fashion_mnist(args.data_dir, args.idx_dir)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"{builder.name} ready in {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
