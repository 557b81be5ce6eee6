"""Inputs from the config: ``config.data`` → grain loaders and evaluation arrays.

    config.data.name        TFDS name; "fashion_mnist_local" is built offline from Debian's IDX
    config.data.data_dir    TFDS data dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.data.idx_dir     where the Fashion-MNIST IDX files are (fashion_mnist_local only)
    config.data.train_split, config.data.test_split
    config.data.in_memory   decode the split once into RAM (small datasets: much faster reads)

Training batches are uint8 images (decoded on the host, shipped as bytes; the
method converts and augments on the device) and int32 labels, read by grain
with a seeded shuffle of one global stream, each process reading only its rows of
each global batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jssl.data import fashion_mnist
from jssl.data.host_transforms import DecodeImage, decode_image
from jssl.data.pipeline import ArraySource, make_loader, make_source
from jssl.data.sampler import GlobalOrderLoader
from jssl.data.subset import labelled_subset


def _field(cfg: Any, name: str, default: Any = None) -> Any:
    return cfg[name] if name in cfg and cfg[name] is not None else default


def load_source(data: Any, split: str):
    """The random-access source of ``split`` (decoded into RAM if ``data.in_memory``)."""
    name, data_dir = data.name, _field(data, "data_dir")
    if name == fashion_mnist.NAME:
        fashion_mnist.prepare_fashion_mnist(
            data_dir, _field(data, "idx_dir", fashion_mnist.DEFAULT_IDX_DIR))
    source = make_source(name, split, data_dir)
    if not _field(data, "in_memory", False):
        return source
    images, labels = decode_all(source)
    return ArraySource(f"{name}:{split}", image=images, label=labels)


def decode_all(source) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], int32 labels [N]) of a whole source."""
    if isinstance(source, ArraySource):
        everything = source[np.arange(len(source))]
        return everything["image"], everything["label"].astype(np.int32)
    n = len(source)
    first = decode_image(source[0]["image"])
    images = np.empty((n, *first.shape), np.uint8)
    labels = np.empty((n,), np.int32)
    chunk = 1024
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        records = (source.__getitems__(idx) if hasattr(source, "__getitems__")
                   else [source[i] for i in idx])
        for i, rec in zip(idx, records, strict=True):
            images[i] = decode_image(rec["image"])
            labels[i] = rec["label"]
    return images, labels


def eval_arrays(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as arrays, for feature extraction and probes."""
    return decode_all(load_source(data, split))


def train_loader(config: Any, *, process_index: int | None = None,
                 process_count: int | None = None) -> GlobalOrderLoader:
    """Endless, seeded loader of this process's rows of uint8 global training batches
    (the same global batches for any number of processes; ``jssl.data.sampler``)."""
    if config.data.get("modality") == "text":  # fortunes or a TFDS text dataset
        from jssl.data.fortunes import train_loader as text_loader
        return text_loader(config, process_index=process_index, process_count=process_count)
    if config.data.get("modality") == "speech":  # spoken digits or a TFDS speech dataset
        from jssl.data.speech import train_loader as speech_loader
        return speech_loader(config, process_index=process_index, process_count=process_count)
    if config.data.get("modality") == "image_text":  # captioned images (coco_captions ...)
        from jssl.data.image_text_tfds import train_loader as captions_loader
        return captions_loader(config, process_index=process_index, process_count=process_count)
    source = load_source(config.data, config.data.train_split)
    # The label-efficiency protocol: supervised runs read a class-balanced labelled subset.
    source = labelled_subset(source, float(_field(config.data, "label_fraction", 1.0)),
                             config.seed)
    return make_loader(source, global_batch_size=config.train.batch_size, seed=config.seed,
                       shuffle=True, num_epochs=None, process_index=process_index,
                       process_count=process_count, transforms=(DecodeImage("uint8"),),
                       worker_count=_field(config.data, "worker_count", 0))
