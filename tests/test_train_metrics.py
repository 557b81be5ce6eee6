"""metrics.jsonl, TensorBoard events, config.json, progress line, NaN stop, PNG plots."""
import io
import json
import struct

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jssl.train.metrics import (
    MetricsWriter,
    ProgressBar,
    check_finite,
    read_metrics,
    write_config,
)
from jssl.train.plots import pca_2d, plot_curves, plot_embedding_2d


def _read_tfrecords(path):
    """Parse a TFRecord file by hand: [u64 length][u32 crc][data][u32 crc] ..."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
    return out


def test_jsonl_and_tensorboard_scalars(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.write_scalars(10, {"loss": jnp.float32(1.5), "lr": 0.1})
        w.write_scalars(20, {"loss": np.array([0.75]), "acc": 3})
        with pytest.raises(ValueError, match="'vec' has shape"):
            w.write_scalars(30, {"vec": np.ones(3)})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    recs = [json.loads(x) for x in lines]
    assert recs[0]["step"] == 10 and recs[0]["loss"] == 1.5 and recs[0]["lr"] == pytest.approx(0.1)
    assert recs[1] == {**recs[1], "step": 20, "loss": 0.75, "acc": 3.0}
    assert all(isinstance(r["time"], float) for r in recs)
    assert read_metrics(tmp_path / "metrics.jsonl") == recs
    # Appending across a restart keeps earlier lines.
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write_scalars(30, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30]
    # A resume from the checkpoint of step 20 drops step 30 (written after that checkpoint,
    # written again by the resumed run) and a torn last line; earlier records stay as they were.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "lo')
    with MetricsWriter(tmp_path, tensorboard=False, resume_step=20) as w:
        w.write_scalars(30, {"loss": 0.25})
    again = read_metrics(tmp_path / "metrics.jsonl")
    assert again[:2] == recs and [(r["step"], r["loss"]) for r in again[2:]] == [(30, 0.25)]

    (event_file,) = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    scalars = {}
    for rec in _read_tfrecords(event_file):
        ev = event_pb2.Event.FromString(rec)
        for v in ev.summary.value:
            scalars[(v.tag, ev.step)] = v.simple_value
    assert scalars[("loss", 10)] == 1.5 and scalars[("loss", 20)] == 0.75
    assert scalars[("lr", 10)] == pytest.approx(0.1) and scalars[("acc", 20)] == 3.0


def test_read_metrics_skips_torn_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(p) == [{"step": 1, "loss": 2.0}]


def test_write_config_round_trip(tmp_path):
    cfg = ml_collections.ConfigDict({"optim": {"name": "lars", "base_lr": 0.3},
                                     "mesh": {"data": -1}, "train": {"steps": 100}})
    path = write_config(tmp_path, cfg)
    back = ml_collections.ConfigDict(json.loads(path.read_text()))
    assert back == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_check_finite():
    check_finite(jnp.float32(1.0), 5, None)
    with pytest.raises(FloatingPointError) as err:
        check_finite(jnp.float32(jnp.nan), 1234, 1000)
    msg = str(err.value)
    assert "step 1234" in msg and "checkpoint is step 1000" in msg and "nan" in msg
    with pytest.raises(FloatingPointError, match="no checkpoint was saved yet"):
        check_finite(np.array([1.0, np.inf]), 7, None)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_bar_plain_lines_every_n():
    out, clock = io.StringIO(), _Clock()
    bar = ProgressBar(1000, global_batch=256, every=100, stream=out, is_tty=False, clock=clock)
    clock.t = 2.0
    assert bar.update(50, loss=1.0) is None  # not a multiple of `every`
    clock.t = 50.0
    line = bar.update(100, loss=jnp.float32(4.123456))
    assert line == "step 100/1000 (10.0%) | 2.00 steps/s | 512 ex/s | loss 4.123 | ETA 7m30s"
    assert out.getvalue() == line + "\n"
    clock.t = 100.0  # 100 steps in 50 s
    assert "ETA 6m40s" in bar.update(200, loss=3.0)
    assert len(out.getvalue().splitlines()) == 2


def test_progress_bar_tty_rewrites_one_line():
    out, clock = io.StringIO(), _Clock()
    bar = ProgressBar(10, global_batch=8, stream=out, is_tty=True, clock=clock)
    for s in range(1, 4):
        clock.t = float(s)
        bar.update(s, loss=1.0 / s)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "step 3/10 (30.0%) | 1.00 steps/s | 8 ex/s | loss 0.3333 | ETA 7s" in text


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_curves_png(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for s in range(0, 100, 10):
            w.write_scalars(s, {"loss": 5.0 / (1 + s), "lr": s / 100, "knn_acc": s / 200})
    out = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    assert _png_size(out) == (1200, 300)  # 3 panels of 4x3 inches at 100 dpi
    assert out.stat().st_size > 5000


def test_pca_2d_recovers_a_plane_and_plot(tmp_path):
    r = np.random.default_rng(0)
    coords = r.normal(size=(200, 2)) * np.array([5.0, 2.0])
    basis, _ = np.linalg.qr(r.normal(size=(16, 2)))
    feats = coords @ basis.T + 3.0
    xy = pca_2d(feats)
    # Rank-2 data: the projection is an isometry of the centred points.
    d_orig = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    d_proj = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.testing.assert_allclose(d_proj, d_orig, atol=1e-8)
    assert xy[:, 0].var() > xy[:, 1].var()
    labels = (coords[:, 0] > 0).astype(int)
    out = plot_embedding_2d(feats, labels, tmp_path / "emb.png")
    assert _png_size(out) == (500, 500) and out.stat().st_size > 5000
    with pytest.raises(ValueError, match="labels shape"):
        plot_embedding_2d(feats, labels[:-1], tmp_path / "bad.png")
