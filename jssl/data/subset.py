"""A labelled subset of a training split (the 1 % / 10 % label-efficiency protocol).

``config.data.label_fraction = 0.01`` makes the training loader read a class-balanced 1 %
of the split, the same records for a given ``config.seed`` as the linear probe's 1 %
subset (both use ``label_subset``; the 1 % subset is contained in the 10 % one).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jssl.data.pipeline import ArraySource, label_subset


class SubsetSource:
    """``source`` restricted to ``indices``: ``subset[i] = source[indices[i]]``."""

    def __init__(self, source: Any, indices: np.ndarray, name: str):
        self._source = source
        self._indices = np.asarray(indices, np.int64)
        self._name = name

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Any:
        return self._source[int(self._indices[index])]

    @property
    def gather(self) -> Any:
        """``gather(keys)`` of the wrapped source at ``indices[keys]``; absent (AttributeError,
        so ``hasattr`` is False) where the wrapped source has none."""
        inner = self._source.gather
        return lambda keys: inner(self._indices[np.asarray(keys)])

    def __repr__(self) -> str:  # stable across processes and runs (grain checks it on restore)
        return f"SubsetSource({self._name}, {len(self)} of {self._source!r})"


def source_labels(source: Any) -> np.ndarray:
    """Every record's ``label`` (without decoding images where the source allows it)."""
    if isinstance(source, ArraySource):
        return np.asarray(source[np.arange(len(source))]["label"])
    return np.asarray([source[i]["label"] for i in range(len(source))])


def labelled_subset(source: Any, fraction: float, seed: int) -> Any:
    """A class-balanced ``fraction`` of ``source`` (``source`` itself when fraction is 1)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.data.label_fraction={fraction} must be in (0, 1]; e.g. 0.01 "
                         f"for 1 % of the labels")
    if fraction == 1.0:
        return source
    indices = label_subset(source_labels(source), fraction, seed)
    return SubsetSource(source, indices, name=f"label_fraction={fraction}, seed={seed}")
