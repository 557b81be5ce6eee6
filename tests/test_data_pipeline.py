"""Tests for jssl.data: grain loader, iterator state, global batches, host transforms."""

from __future__ import annotations

import io
from pathlib import Path

import jax
import numpy as np
import pytest
from grain import checkpoint as grain_checkpoint
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from PIL import Image

from jssl.data.host_transforms import DecodeImage, RandomResizedCrop, sample_crop_box
from jssl.data.pipeline import (
    ArraySource,
    iterator_state,
    label_subset,
    make_loader,
    restore_iterator,
    to_global_batch,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- grain loader

N = 64


def _source(n: int = N) -> ArraySource:
    """Record i has label i % 10 and an image whose every pixel is i (so ids survive decoding)."""
    ids = np.arange(n)
    return ArraySource(
        image=np.broadcast_to(ids[:, None, None, None], (n, 4, 4, 1)).astype(np.uint8),
        label=ids % 10,
    )


def _ids(batch) -> np.ndarray:
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)


def _take(iterator, k: int) -> list[np.ndarray]:
    return [_ids(next(iterator)) for _ in range(k)]


def test_loader_deterministic_epochs_and_batches():
    kw = dict(global_batch_size=8, num_epochs=2, process_index=0, process_count=1)
    run = lambda seed: np.concatenate(list(map(_ids, make_loader(_source(), seed=seed, **kw))))
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2 * N,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for order in (a, c):
        for epoch in (order[:N], order[N:]):
            np.testing.assert_array_equal(np.sort(epoch), np.arange(N))  # each record once
        assert not np.array_equal(order[:N], order[N:])  # reshuffled every epoch
    batch = next(iter(make_loader(_source(), seed=0, **kw)))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 4, 4, 1)
    np.testing.assert_array_equal(batch["label"], _ids(batch) % 10)
    ordered = make_loader(_source(), seed=0, shuffle=False, **kw)
    np.testing.assert_array_equal(_ids(next(iter(ordered))), np.arange(8))


@pytest.mark.parametrize("n", [64, 67])
def test_loader_process_shards_disjoint_and_cover(n):
    seen = []
    for index in (0, 1):
        loader = make_loader(
            _source(n),
            global_batch_size=8,
            seed=3,
            num_epochs=1,
            process_index=index,
            process_count=2,
        )
        batches = list(map(_ids, loader))
        assert all(len(b) == 4 for b in batches)  # per-process batch = 8 // 2
        seen.append(np.concatenate(batches))
    assert not set(seen[0]) & set(seen[1])
    union = np.sort(np.concatenate(seen))
    assert len(union) == 64  # 67 records: the remainder 3 are dropped so shards are equal
    if n == 64:
        np.testing.assert_array_equal(union, np.arange(64))


@pytest.mark.parametrize("n, index, count, epochs, drop", [
    (64, 0, 1, 3, True), (67, 1, 2, 2, True), (67, 0, 1, 1, False), (64, 1, 2, None, True)])
def test_whole_batch_reads_equal_grains_record_reads(n, index, count, epochs, drop):
    """An in-memory source is read one gather per batch; batches, their order across epochs
    and processes, a final partial batch and iterator states equal grain's record reads."""
    from jssl.data.subset import SubsetSource

    subset = SubsetSource(_source(n + 9), np.arange(3, n + 3), name="s")
    for source in (_source(n), subset):
        kw = dict(global_batch_size=8, seed=2, num_epochs=epochs, process_index=index,
                  process_count=count, drop_remainder=drop, transforms=(DecodeImage("uint8"),))
        fast, slow = make_loader(source, **kw), make_loader(source, vectorize=False, **kw)
        assert fast.vectorized and not slow.vectorized
        k = 40 if epochs is None else None  # the endless stream: 40 batches, 5 epochs
        a = list(fast) if k is None else [next(i) for i in [iter(fast)] for _ in range(k)]
        b = list(slow) if k is None else [next(i) for i in [iter(slow)] for _ in range(k)]
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert x["image"].dtype == y["image"].dtype == np.uint8
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["label"], y["label"])
            assert x["label"].dtype == y["label"].dtype == np.int32
        it = iter(fast)
        for _ in range(3):
            next(it)
        resumed = restore_iterator(make_loader(source, vectorize=False, **kw),
                                   iterator_state(it))
        np.testing.assert_array_equal(next(resumed)["image"], next(it)["image"])
    crops = make_loader(_source(), global_batch_size=8, seed=0, process_count=1,
                        transforms=(RandomResizedCrop(size=4, num_views=2),))
    assert not crops.vectorized  # a per-record random transform goes through grain


def test_loader_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="multiple of process_count=3"):
        make_loader(_source(), global_batch_size=8, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="smaller than one batch"):
        make_loader(_source(), global_batch_size=128, seed=0, num_epochs=1, process_count=1)
    with pytest.raises(ValueError, match="process_index=2 is not in"):
        make_loader(_source(), global_batch_size=8, seed=0, process_index=2, process_count=2)


def test_loader_defaults_to_jax_process():
    loader = make_loader(_source(), global_batch_size=8, seed=0)
    assert len(next(iter(loader))["label"]) == 8 // jax.process_count()


@pytest.mark.parametrize("k", [3, 7])  # k=7: the m batches cross the epoch boundary
def test_iterator_state_restores_exact_stream(k):
    m = 5
    transforms = (RandomResizedCrop(size=4, num_views=2, scale=(0.3, 1.0)),)
    make = lambda: make_loader(
        _source(),
        global_batch_size=8,
        seed=5,
        transforms=transforms,
        process_index=1,
        process_count=2,
    )
    it = iter(make())
    for _ in range(k):
        next(it)
    state = iterator_state(it)
    assert isinstance(state, bytes)
    want = [next(it) for _ in range(m)]
    restored = restore_iterator(make(), state.decode())  # str works as well as bytes
    got = [next(restored) for _ in range(m)]
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w["views"], g["views"])  # same records and same crops
        np.testing.assert_array_equal(w["label"], g["label"])
    wrong_seed = make_loader(
        _source(),
        global_batch_size=8,
        seed=6,
        transforms=transforms,
        process_index=1,
        process_count=2,
    )
    with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
        restore_iterator(wrong_seed, state)


def test_iterator_state_with_orbax(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    loader = make_loader(_source(), global_batch_size=8, seed=2, process_index=0, process_count=1)
    it = iter(loader)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path) as mgr:
        mgr.save(3, args=ocp.args.Composite(ds=grain_checkpoint.CheckpointSave(it)))
    want = _take(it, 4)
    with ocp.CheckpointManager(tmp_path) as mgr:
        fresh = iter(loader)
        restored = mgr.restore(
            3, args=ocp.args.Composite(ds=grain_checkpoint.CheckpointRestore(fresh))
        )
    np.testing.assert_array_equal(np.stack(_take(restored.ds, 4)), np.stack(want))
    assert (tmp_path / "3" / "ds" / "process_0-of-1.json").is_file()


# ----------------------------------------------------------------------------- global batch


def test_to_global_batch_shards_rows():
    devices = np.array(jax.devices())
    local = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "label": np.arange(16)}
    mesh = Mesh(devices, ("data",))
    out = to_global_batch(local, mesh, P("data"))
    for key in local:
        assert out[key].shape == local[key].shape
        np.testing.assert_array_equal(np.asarray(out[key]), local[key])
        for shard in out[key].addressable_shards:
            np.testing.assert_array_equal(shard.data, local[key][shard.index])
            assert shard.data.shape[0] == 2
    mesh2 = Mesh(devices.reshape(4, 2), ("data", "model"))
    specs = {"image": P("data", None), "label": P(("data", "model"))}
    out2 = to_global_batch(local, mesh2, specs)
    assert {s.data.shape for s in out2["image"].addressable_shards} == {
        (4, 3)
    }  # replicated on model
    assert {s.data.shape for s in out2["label"].addressable_shards} == {(2,)}
    np.testing.assert_array_equal(np.asarray(out2["image"]), local["image"])


# ----------------------------------------------------------------------------- label subsets


def test_label_subset_balanced_deterministic_nested():
    labels = np.repeat(np.arange(10), 100)
    np.random.default_rng(0).shuffle(labels)
    ten = label_subset(labels, 0.10, seed=0)
    one = label_subset(labels, 0.01, seed=0)
    assert len(ten) == 100 and len(one) == 10
    np.testing.assert_array_equal(np.bincount(labels[ten]), np.full(10, 10))
    np.testing.assert_array_equal(np.bincount(labels[one]), np.ones(10))
    assert set(one) <= set(ten)
    np.testing.assert_array_equal(ten, label_subset(labels, 0.10, seed=0))
    assert not np.array_equal(ten, label_subset(labels, 0.10, seed=1))
    assert len(np.unique(ten)) == len(ten) and np.all(np.diff(ten) > 0)
    flat = label_subset(labels, 0.013, seed=0, per_class=False)
    assert len(flat) == round(0.013 * 1000) == 13 and len(np.unique(flat)) == 13


def test_label_subset_unbalanced_and_errors():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    sub = label_subset(labels, 0.3, seed=4)
    np.testing.assert_array_equal(np.bincount(labels[sub]), [10, 10, 10])  # round(.3*100/3)
    with pytest.raises(ValueError, match="class 2 has 20 examples, fewer than the 27"):
        label_subset(labels, 0.8, seed=0)
    with pytest.raises(ValueError, match="selects nothing"):
        label_subset(labels, 0.001, seed=0)
    with pytest.raises(ValueError, match="fraction must be in"):
        label_subset(labels, 0.0, seed=0)


# ----------------------------------------------------------------------------- host transforms


def test_decode_image_dtypes_and_png_bytes():
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 1), dtype=np.uint8)
    out = DecodeImage().map({"image": image, "label": 7})
    np.testing.assert_allclose(out["image"], image / 255.0, rtol=1e-6)
    assert out["image"].dtype == np.float32 and out["label"] == 7
    np.testing.assert_array_equal(
        DecodeImage("uint8").map({"image": image[..., 0], "label": 1})["image"], image
    )
    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    np.testing.assert_array_equal(
        DecodeImage("uint8").map({"image": buf.getvalue(), "label": 0})["image"], image
    )


def test_random_resized_crop_geometry():
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    full = RandomResizedCrop(size=12, num_views=6, scale=(1, 1), ratio=(1, 1), dtype="uint8")
    views = full.random_map({"image": image, "label": 3}, np.random.default_rng(0))["views"]
    assert views.shape == (6, 12, 12, 3) and views.dtype == np.uint8
    flipped = [np.array_equal(v, image[:, ::-1]) for v in views]
    assert all(f or np.array_equal(v, image) for f, v in zip(flipped, views, strict=True))
    assert 0 < sum(flipped) < 6  # both outcomes occur with this seed
    crop = RandomResizedCrop(size=8, num_views=3, scale=(0.2, 0.6))
    a = crop.random_map({"image": image, "label": 0}, np.random.default_rng(9))["views"]
    b = crop.random_map({"image": image, "label": 0}, np.random.default_rng(9))["views"]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 8, 8, 3) and not np.array_equal(a[0], a[1])
    rng = np.random.default_rng(2)
    for _ in range(200):
        top, left, h, w = sample_crop_box(40, 60, rng, scale=(0.1, 0.5), ratio=(0.5, 2.0))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.09 <= h * w / 2400 <= 0.52 and 0.45 <= w / h <= 2.2
    assert sample_crop_box(10, 100, rng, scale=(0.9, 1.0), ratio=(1.0, 1.0)) == (0, 45, 10, 10)
