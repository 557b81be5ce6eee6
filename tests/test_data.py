"""Tests for jssl.data: IDX reader, Fashion-MNIST TFDS builder, grain pipeline, host transforms."""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from grain import checkpoint as grain_checkpoint
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from PIL import Image

from jssl.data import fashion_mnist as fm
from jssl.data.host_transforms import DecodeImage, RandomResizedCrop, sample_crop_box
from jssl.data.idx import read_idx, read_idx_images, read_idx_labels, write_idx
from jssl.data.pipeline import (
    ArraySource,
    iterator_state,
    label_subset,
    make_loader,
    make_source,
    restore_iterator,
    to_global_batch,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- IDX files


def _idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """IDX file content assembled by hand (independent of jssl.data.idx.write_idx)."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def _images_and_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_matches_hand_written_file(tmp_path, compress):
    images, labels = _images_and_labels(5, seed=0)
    img = _idx_bytes(0x08, (5, 28, 28), images.tobytes())
    lab = _idx_bytes(0x08, (5,), labels.tobytes())
    if compress:
        img, lab = gzip.compress(img), gzip.compress(lab)
    (tmp_path / "img").write_bytes(img)
    (tmp_path / "lab").write_bytes(lab)
    got = read_idx_images(tmp_path / "img", shape=(28, 28))
    np.testing.assert_array_equal(got, images)
    assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "lab", num_classes=10), labels)


def test_idx_reader_big_endian_multibyte(tmp_path):
    (tmp_path / "i4").write_bytes(
        _idx_bytes(0x0C, (2,), bytes([1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFE]))
    )
    np.testing.assert_array_equal(read_idx(tmp_path / "i4"), [0x01020304, -2])
    f8 = np.array([[1.5, -2.25]])
    (tmp_path / "f8").write_bytes(_idx_bytes(0x0E, (1, 2), f8.astype(">f8").tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "f8"), f8)
    # write_idx round-trips and produces exactly the hand-made bytes
    write_idx(tmp_path / "w.gz", np.array([0x01020304, -2], np.int32))
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == (tmp_path / "i4").read_bytes()


def test_idx_truncated_payload_names_file_and_counts(tmp_path):
    images, _ = _images_and_labels(4, seed=1)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (4, 28, 28), images.tobytes()[:-10])))
    with pytest.raises(ValueError, match=r"expected 3136 bytes of pixel data, got 3126") as e:
        read_idx_images(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value)


def test_idx_truncated_gzip_stream_names_file(tmp_path):
    images, _ = _images_and_labels(4, seed=1)
    blob = gzip.compress(_idx_bytes(0x08, (4, 28, 28), images.tobytes()))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(OSError, match="corrupt or truncated gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_bad_files_rejected(tmp_path):
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="bad IDX magic number 0x12340801") as e:
        read_idx(bad_magic)
    assert str(bad_magic) in str(e.value)
    unknown_type = tmp_path / "unknown_type"
    unknown_type.write_bytes(_idx_bytes(0x07, (1,), b"\x00"))
    with pytest.raises(ValueError, match="bad IDX magic"):
        read_idx(unknown_type)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(_idx_bytes(0x08, (3,), b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="trailing bytes.*expected 3 bytes of pixel data, got 4"):
        read_idx(trailing)
    short_header = tmp_path / "short_header"
    short_header.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match="truncated header"):
        read_idx(short_header)
    labels = tmp_path / "labels"
    labels.write_bytes(_idx_bytes(0x08, (3,), bytes([1, 10, 2])))
    with pytest.raises(ValueError, match=r"label 10 at index 1 is outside \[0, 10\)"):
        read_idx_labels(labels, num_classes=10)
    with pytest.raises(ValueError, match="expected a 3-d uint8 image file"):
        read_idx_images(labels)
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        read_idx(tmp_path / "missing.gz")


# ----------------------------------------------------------------------------- TFDS builder


def _write_idx_set(idx_dir: Path, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, ...]]:
    idx_dir.mkdir(parents=True, exist_ok=True)
    data = {}
    for seed, (split, n) in enumerate(sizes.items()):
        images, labels = _images_and_labels(n, seed=10 + seed)
        img_name, lab_name = fm.IDX_FILES[split]
        (idx_dir / img_name).write_bytes(
            gzip.compress(_idx_bytes(0x08, (n, 28, 28), images.tobytes()))
        )
        (idx_dir / lab_name).write_bytes(gzip.compress(_idx_bytes(0x08, (n,), labels.tobytes())))
        data[split] = (images, labels)
    return data


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    data = _write_idx_set(root / "idx", {"train": 64, "test": 32})
    builder = fm.prepare_fashion_mnist(root / "tfds", root / "idx", allow_download=False)
    return root, data, builder


def test_tfds_build_reads_back_exactly(tiny_fmnist):
    root, data, builder = tiny_fmnist
    assert builder.name == "fashion_mnist_local"
    assert builder.info.features["label"].names == list(fm.CLASS_NAMES)
    assert builder.info.features["image"].shape == (28, 28, 1)
    shards = sorted(p.name for p in Path(builder.data_dir).glob("*.array_record*"))
    assert shards == [
        f"fashion_mnist_local-{s}.array_record-00000-of-00001" for s in ("test", "train")
    ]
    for split, (images, labels) in data.items():
        source = tfds.data_source("fashion_mnist_local", split=split, data_dir=root / "tfds")
        assert len(source) == len(images)
        records = [source[i] for i in range(len(source))]
        got = np.stack([r["image"] for r in records])
        assert got.dtype == np.uint8 and got.shape == (len(images), 28, 28, 1)
        np.testing.assert_array_equal(got[..., 0], images)
        np.testing.assert_array_equal([r["label"] for r in records], labels)
    # make_source goes through the same path (and does not rebuild)
    source = make_source("fashion_mnist_local", "test", root / "tfds")
    np.testing.assert_array_equal(source[31]["image"][..., 0], data["test"][0][31])


def test_prepare_is_idempotent_and_cleans_killed_build(tiny_fmnist):
    root, _, builder = tiny_fmnist
    shard = next(Path(builder.data_dir).glob("*train.array_record*"))
    before = shard.stat().st_mtime_ns
    stale = Path(builder.data_dir).parent / "incomplete.ABC123_1.0.0"  # what a kill -9 leaves
    stale.mkdir()
    (stale / "half-written.array_record").write_bytes(b"junk")
    again = fm.prepare_fashion_mnist(root / "tfds", root / "idx", allow_download=False)
    assert again.data_dir == builder.data_dir
    assert shard.stat().st_mtime_ns == before  # reused, not rebuilt
    assert stale.exists()  # a complete build is never touched
    stale_other = root / "tfds2" / "fashion_mnist_local" / "incomplete.XYZ789_1.0.0"
    stale_other.mkdir(parents=True)
    fresh = fm.prepare_fashion_mnist(root / "tfds2", root / "idx", allow_download=False)
    assert not stale_other.exists() and fresh.is_prepared()
    assert (
        len(tfds.data_source("fashion_mnist_local", split="train", data_dir=root / "tfds2")) == 64
    )
    shutil.rmtree(stale)


def test_concurrent_prepare_builds_once(tiny_fmnist, tmp_path):
    root, data, _ = tiny_fmnist
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        jobs = [
            pool.submit(fm.prepare_fashion_mnist, tmp_path, root / "idx", allow_download=False)
            for _ in range(3)
        ]
        builders = [j.result() for j in jobs]
    assert {b.data_dir for b in builders} == {str(tmp_path / "fashion_mnist_local" / "1.0.0")}
    assert sorted(p.name for p in (tmp_path / "fashion_mnist_local").iterdir()) == ["1.0.0"]
    source = tfds.data_source("fashion_mnist_local", split="train", data_dir=tmp_path)
    np.testing.assert_array_equal(source[63]["image"][..., 0], data["train"][0][63])


def test_failed_build_leaves_nothing_and_names_file(tmp_path):
    _write_idx_set(tmp_path / "idx", {"train": 8, "test": 4})
    bad = tmp_path / "idx" / fm.IDX_FILES["test"][0]
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-5]))
    with pytest.raises(ValueError, match="expected 3136 bytes of pixel data, got 3131") as e:
        fm.prepare_fashion_mnist(tmp_path / "tfds", tmp_path / "idx", allow_download=False)
    assert str(bad) in str(e.value)
    ds_dir = tmp_path / "tfds" / "fashion_mnist_local"
    assert not (ds_dir / "1.0.0").exists()
    assert not list(ds_dir.glob("incomplete*"))  # TFDS removed its temp dir
    _write_idx_set(tmp_path / "idx", {"train": 8, "test": 4})  # repaired: builds cleanly
    assert fm.prepare_fashion_mnist(tmp_path / "tfds", tmp_path / "idx").is_prepared()


def test_prepare_fallback_error_gives_install_commands(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError) as e:
        fm.prepare_fashion_mnist(tmp_path / "tfds", tmp_path / "no_idx", allow_download=False)
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in str(e.value)
    assert str(tmp_path / "no_idx") in str(e.value)
    calls = []

    def offline_builder(name, **kwargs):
        calls.append(name)
        raise ConnectionError("no internet")

    monkeypatch.setattr(tfds, "builder", offline_builder)
    with pytest.raises(RuntimeError, match=r"\(b\) TFDS download .*no internet") as e:
        fm.prepare_fashion_mnist(tmp_path / "tfds", tmp_path / "no_idx")
    assert calls == ["fashion_mnist"]
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in str(e.value)


_NO_TF_SCRIPT = """
import importlib.machinery as m, sys
if {hide_tf}:  # make tensorflow uninstallable-looking: find_spec -> None, as when it is absent
    class Hide(m.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                return None
            return m.PathFinder.find_spec(name, path, target)
    sys.meta_path[:] = [Hide if f is m.PathFinder else f for f in sys.meta_path]
import numpy as np, tensorflow_datasets as tfds
if {build}:
    from jssl.data.fashion_mnist import prepare_fashion_mnist
    prepare_fashion_mnist({data_dir!r}, {idx_dir!r}, allow_download=False)
src = tfds.data_source("fashion_mnist_local", split="test", data_dir={data_dir!r})
images = np.stack([src[i]["image"] for i in range(len(src))])
labels = [int(src[i]["label"]) for i in range(len(src))]
print(json.dumps({{"tf": "tensorflow" in sys.modules, "sum": int(images.sum()), "labels": labels}}))
"""


@pytest.mark.parametrize("hide_tf", [True, False])
def test_build_and_read_without_tensorflow(tiny_fmnist, tmp_path, hide_tf):
    """A fresh process builds and reads with TF hidden, and never imports TF even when present."""
    root, data, _ = tiny_fmnist
    build = hide_tf  # the hidden-TF run also builds (into its own dir); the other only reads
    data_dir = tmp_path / "tfds" if build else root / "tfds"
    script = "import json\n" + textwrap.dedent(_NO_TF_SCRIPT).format(
        hide_tf=hide_tf, build=build, data_dir=str(data_dir), idx_dir=str(root / "idx")
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tf"] is False
    assert result["sum"] == int(data["test"][0].astype(np.int64).sum())
    assert result["labels"] == data["test"][1].tolist()


def test_make_source_errors(tmp_path):
    src = ArraySource(label=np.arange(3))
    assert make_source(src) is src
    with pytest.raises(TypeError, match="__len__ and __getitem__"):
        make_source(42)
    with pytest.raises(FileNotFoundError, match="(?s)not prepared in .*download_and_prepare"):
        make_source("mnist", "train", tmp_path)


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
