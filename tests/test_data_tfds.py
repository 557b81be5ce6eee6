"""Tests for jssl.data: IDX reader and the offline Fashion-MNIST TFDS builder."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jssl.data import fashion_mnist as fm
from jssl.data.idx import read_idx, read_idx_images, read_idx_labels, write_idx
from jssl.data.pipeline import (
    ArraySource,
    make_source,
)

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("data_tfds")

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


def test_prepare_reuses_a_copied_build_without_idx_files(tiny_fmnist, tmp_path):
    """A complete build copied to another data dir (e.g. onto a GPU machine without the
    Debian package) is read as is: no IDX files, no download attempt."""
    root, data, builder = tiny_fmnist
    shutil.copytree(Path(builder.data_dir).parent, tmp_path / "fashion_mnist_local")
    copied = fm.prepare_fashion_mnist(tmp_path, tmp_path / "no_idx", allow_download=False)
    assert copied.name == "fashion_mnist_local"
    assert copied.data_dir == str(tmp_path / "fashion_mnist_local" / "1.0.0")
    source = tfds.data_source("fashion_mnist_local", split="test", data_dir=tmp_path)
    np.testing.assert_array_equal(source[5]["image"][..., 0], data["test"][0][5])
    with pytest.raises(RuntimeError, match="no IDX files"):
        fm.prepare_fashion_mnist(tmp_path / "empty", tmp_path / "no_idx", allow_download=False)


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
