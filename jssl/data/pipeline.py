"""The grain input pipeline: random-access source -> per-process shard -> shuffled host batches.

* ``make_source`` opens ``tfds.data_source(name, split, data_dir)`` (array_record on disk; records
  are dicts with ``image`` uint8 (H, W, C) and ``label``) or passes through any object with
  ``__len__``/``__getitem__``, such as :class:`ArraySource`.
* ``make_loader`` builds a loader over one global, seeded stream (reshuffled every epoch):
  host-side transforms, then ``Batch(global_batch_size // process_count)``. Batch ``s`` of
  process ``p`` is its rows of global batch ``s``, the same records in the same order whatever
  the number of processes (``jssl.data.sampler``); each process reads only its own rows.
* ``iterator_state`` / ``restore_iterator`` checkpoint the iterator: JSON holding the number of
  global batches served, the same on every process, so it restores into another process count.
  With Orbax use ``grain.checkpoint.CheckpointHandler`` through
  ``grain.checkpoint.CheckpointSave(it)`` / ``grain.checkpoint.CheckpointRestore(it)`` inside
  ``ocp.args.Composite``; it writes one ``process_<i>-of-<n>.json`` per process.
* ``to_global_batch`` assembles the per-process batches into global ``jax.Array``\\ s.
* ``label_subset`` picks the class-balanced 1 % / 10 % label subsets for semi-supervised eval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grain.python as grain
import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jssl.data.host_transforms import DecodeImage
from jssl.data.sampler import GlobalOrderIterator, GlobalOrderLoader, GlobalOrderSampler

__all__ = [
    "ArraySource",
    "iterator_state",
    "label_subset",
    "make_loader",
    "make_source",
    "restore_iterator",
    "to_global_batch",
]


class ArraySource:
    """In-memory random-access source over aligned arrays; ``source[i]`` is ``{key: arr[i]}``.

    Its ``repr`` is data-independent but stable across processes and runs, which grain needs to
    validate a restored iterator state.
    """

    def __init__(self, name: str = "arrays", **arrays: np.ndarray):
        if not arrays:
            raise ValueError("ArraySource needs at least one array")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays of different lengths: {lengths}")
        self._name = name
        self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self._arrays.items()}

    def gather(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        """Records ``keys`` stacked: ``{key: arr[keys]}`` (one read for a whole batch)."""
        return {k: v[keys] for k, v in self._arrays.items()}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}:{v.dtype}{list(v.shape)}" for k, v in self._arrays.items())
        return f"ArraySource(name={self._name!r}, {fields})"


def make_source(
    name: str | Sequence[Any], split: str = "train", data_dir: str | os.PathLike | None = None
) -> Sequence[Any]:
    """A random-access source: a TFDS dataset name (prepared on disk) or an existing source.

    Args:
      name: a TFDS name (``"fashion_mnist_local"``, ``"imagenet2012"``, ``"name/config:1.0.0"``)
        or any object with ``__len__`` and ``__getitem__``, returned unchanged.
      split: TFDS split expression, e.g. ``"train"``, ``"train[:90%]"``.
      data_dir: TFDS data dir; ``None`` means ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
        ``fashion_mnist_local`` is built there on first use from the Debian IDX files.
    """
    if not isinstance(name, str):
        if not (hasattr(name, "__len__") and hasattr(name, "__getitem__")):
            raise TypeError(f"a source needs __len__ and __getitem__, got {type(name).__name__}")
        return name
    import tensorflow_datasets as tfds

    from jssl.data import fashion_mnist

    if name.split(":")[0] == fashion_mnist.NAME:
        # Built once from the Debian IDX files (or TFDS's own ``fashion_mnist`` as fallback).
        builder = fashion_mnist.prepare_fashion_mnist(data_dir)
        name, data_dir = builder.name, builder.data_dir_root
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        where = data_dir or "$TFDS_DATA_DIR or ~/tensorflow_datasets"
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {where} (looked for {builder.data_dir}). "
            f"Prepare it once with:\n  python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder({name!r}, data_dir={str(where)!r})"
            f".download_and_prepare(file_format='array_record')\""
        )
    file_format = builder.info.file_format
    if file_format is not None and file_format.value not in ("array_record", "parquet"):
        raise ValueError(
            f"{builder.data_dir} holds {name!r} as {file_format.value}, which has no random "
            "access; rebuild it with download_and_prepare(file_format='array_record')"
        )
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def _process_index_count(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} is not in [0, process_count={count})")
    return index, count


def make_loader(
    source: Sequence[Any],
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    transforms: Sequence[Any] = (DecodeImage(),),
    drop_remainder: bool = True,
    worker_count: int = 0,
    worker_buffer_size: int = 1,
    vectorize: bool = True,
) -> GlobalOrderLoader:
    """A deterministic, checkpointable loader of this process's rows of global batches.

    Args:
      source: random-access source (``make_source``).
      global_batch_size: batch over all processes ``B``; process ``p`` of ``P`` yields rows
        ``[p·B/P, (p+1)·B/P)`` of every global batch.
      seed: shuffle seed (and the per-record seed of ``grain.RandomMapTransform``\\ s, which
        follows the record's global stream position, not the process).
      shuffle: shuffle the whole source, a fresh order every epoch (else source order).
      num_epochs: ``None`` repeats forever; global batches run across epoch boundaries.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
      transforms: grain transforms applied per record before batching (host side).
      drop_remainder: drop the last partial global batch of the (finite) stream.
      worker_count: grain worker processes (0: in the calling process). Batches do not depend
        on it, but the iterator state records it: keep it fixed for a run and its restarts.
        A finite stream read by ``W`` workers may end up to ``W - 1`` batches early (each
        worker drops its own remainder). Outside ``absl.app.run`` this marks absl flags as
        parsed (grain's workers read them).
      worker_buffer_size: batches each worker prepares ahead.
      vectorize: read a batch in one gather when the source and transforms allow it
        (``jssl.data.sampler``: the same batches; ``False`` forces grain's record reads).

    Raises:
      ValueError: ``global_batch_size`` does not divide by ``process_count``, or the stream is
        smaller than one global batch.
    """
    index, count = _process_index_count(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={count}"
        )
    if drop_remainder and num_epochs is not None and len(source) * num_epochs < global_batch_size:
        raise ValueError(
            f"{len(source)} records x {num_epochs} epochs is smaller than one batch of "
            f"global_batch_size={global_batch_size}: the loader would yield nothing"
        )
    if worker_count and not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags; outside ``absl.app.run`` use the defaults.
        flags.FLAGS.mark_as_parsed()
    sampler = GlobalOrderSampler(
        len(source), global_batch_size=global_batch_size, process_index=index,
        process_count=count, shuffle=shuffle, num_epochs=num_epochs, seed=seed,
        worker_count=worker_count, drop_remainder=drop_remainder)
    batch = grain.Batch(batch_size=global_batch_size // count, drop_remainder=drop_remainder)
    return GlobalOrderLoader(source, sampler, [*transforms, batch], worker_count=worker_count,
                             worker_buffer_size=worker_buffer_size, vectorize=vectorize)


def iterator_state(iterator: GlobalOrderIterator) -> bytes:
    """The iterator's position as JSON bytes (global batches served; process-independent)."""
    return iterator.get_state()


def restore_iterator(
    loader: GlobalOrderLoader, state: bytes | str | None
) -> GlobalOrderIterator:
    """A fresh iterator of ``loader`` positioned at ``state`` (``None``: at the start).

    ``loader`` must read the same source with the same seed, shuffle, epochs, global batch
    size and worker count as the one that produced ``state``; the process count may differ.
    A mismatch raises ``ValueError``.
    """
    iterator = iter(loader)
    if state is not None:
        iterator.set_state(state.encode() if isinstance(state, str) else bytes(state))
    return iterator


def to_global_batch(local_batch: Any, mesh: Mesh, pspec: PartitionSpec | Any) -> Any:
    """Per-process NumPy batch -> global ``jax.Array``\\ s, ``NamedSharding(mesh, pspec)``.

    ``pspec`` is one ``PartitionSpec`` for every leaf (e.g. ``P(("data", "fsdp"))``: axis 0 over
    the batch axes) or a pytree of them matching ``local_batch``. The global batch axis is
    ``process_count`` times the local one; process ``p`` contributes rows
    ``[p * local, (p + 1) * local)`` when the batch axes span processes in order.
    """
    if isinstance(pspec, PartitionSpec):
        shardings = jax.tree.map(lambda _: NamedSharding(mesh, pspec), local_batch)
    else:
        shardings = jax.tree.map(
            lambda s: NamedSharding(mesh, s),
            pspec,
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )
    return jax.tree.map(
        lambda sharding, x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
        shardings,
        local_batch,
    )


def label_subset(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int, per_class: bool = True
) -> np.ndarray:
    """Sorted indices of a labelled subset (e.g. 1 % or 10 %), fixed by ``seed``.

    With ``per_class`` every class present gets exactly ``round(fraction * N / C)`` examples
    (class-balanced; a class with fewer examples raises ``ValueError``); otherwise
    ``round(fraction * N)`` indices are drawn uniformly. Each class (or the whole set) is
    permuted once per seed and the subset is a prefix of that permutation, so for one seed the
    1 % subset is contained in the 10 % subset.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-d array, got shape {labels.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    if not per_class:
        count = round(fraction * labels.size)
        if count == 0:
            raise ValueError(f"fraction={fraction} of {labels.size} labels selects nothing")
        return np.sort(rng.permutation(labels.size)[:count]).astype(np.int64)
    classes = np.unique(labels)
    count = round(fraction * labels.size / classes.size)
    if count == 0:
        raise ValueError(
            f"fraction={fraction} of {labels.size} labels over {classes.size} classes selects "
            "nothing per class"
        )
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size < count:
            raise ValueError(
                f"class {c} has {members.size} examples, fewer than the {count} per class that "
                f"fraction={fraction} needs for a class-balanced subset"
            )
        chosen.append(members[rng.permutation(members.size)[:count]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)
