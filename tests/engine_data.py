"""Small Fashion-MNIST-format data made in the tests (real images when Debian's package is
installed, otherwise seeded noise), written as IDX files and built through the same
TFDS array_record path as the full dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jssl.data.fashion_mnist import DEFAULT_IDX_DIR, IDX_FILES
from jssl.data.idx import read_idx_images, read_idx_labels, write_idx


def make_idx_dir(root: Path, n_train: int = 200, n_test: int = 50) -> Path:
    """IDX files with ``n_train``/``n_test`` 28×28 images and balanced labels."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = IDX_FILES[split]
        src_images, src_labels = DEFAULT_IDX_DIR / images_name, DEFAULT_IDX_DIR / labels_name
        if src_images.exists() and src_labels.exists():
            images, labels = read_idx_images(src_images)[:n], read_idx_labels(src_labels)[:n]
        else:
            rng = np.random.default_rng(0 if split == "train" else 1)
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels = np.arange(n) % 10
        write_idx(root / images_name, images.astype(np.uint8))
        write_idx(root / labels_name, labels.astype(np.uint8))
    return root


def tiny_overrides(tmp: Path) -> dict:
    """Config overrides pointing a preset at the small data in ``tmp``."""
    idx = make_idx_dir(tmp / "idx")
    return {"data.idx_dir": str(idx), "data.data_dir": str(tmp / "tfds")}
