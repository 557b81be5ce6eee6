"""T5 span corruption on real fortunes: the corrupted pair reconstructs the row, the loss is the
NumPy cross-entropy of the model's logits, the tiny preset runs end to end, one step is the
same on 1 and 8 devices, and bad configs fail with one clear line."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from test_engine import _build, _one_step, _prepared
from test_text_methods import cache, text_config  # noqa: F401  (fixture)

from jssl.data import fortunes as f
from jssl.methods import get_method
from jssl.train.mesh import make_mesh
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = [pytest.mark.xdist_group("text_t5"),
              pytest.mark.skipif(not Path(f.DEFAULT_ROOT).is_dir(),
                                 reason="Debian fortunes not installed")]


def _rows(config) -> np.ndarray:
    corpus = f.load_corpus(config.data)
    return f.pack(corpus.train_ids, config.data, 0)["tokens"][:16]


def _uncorrupt(inputs: np.ndarray, targets: np.ndarray, first: int, last: int) -> list[int]:
    """NumPy reference: put each sentinel's span (from the targets) back into the inputs."""
    spans, current = {}, None
    for t in targets:
        if first <= t <= last:
            current = int(t)
            spans[current] = []
        else:
            spans[current].append(int(t))
    out = []
    for t in inputs:
        out.extend(spans[int(t)] if first <= t <= last else [int(t)])
    return out


def test_corrupted_inputs_and_targets_reconstruct_the_row(cache):  # noqa: F811
    config = text_config(cache, "t5")
    method = get_method("t5")(config, make_mesh(config, devices=jax.devices()[:1]))
    tokens = _rows(config)
    inputs, targets = jax.device_get(method.corrupt(tokens, jax.random.key(3)))
    last = f.sentinel_start(config.data.num_sentinels)
    first = last - config.data.num_sentinels + 1
    n_len = config.data.seq_len
    dropped = 0
    for row, x, y in zip(tokens, inputs, targets, strict=True):
        n = n_len
        while n and row[n - 1] == f.PAD:  # trailing padding is never corrupted
            n -= 1
        real = row[:n]
        x, y = x[x != f.PAD], y[y != f.PAD]
        assert x[-1] == f.SEP and y[-1] == f.SEP  # EOS closes both
        # Sentinels count down from <extra_id_0> in order, the same ones in inputs and targets.
        sx, sy = x[(x >= first) & (x <= last)], y[(y >= first) & (y <= last)]
        np.testing.assert_array_equal(sx, last - np.arange(len(sx)))
        np.testing.assert_array_equal(sy, sx)
        got = _uncorrupt(x[:-1], y[:-1], first, last)
        np.testing.assert_array_equal(got, real)
        dropped += len(y) - 1 - len(sy)
    # 15 % of the tokens are dropped (counts are deterministic per row length).
    assert abs(dropped / tokens.size - 0.15) < 0.02


def test_loss_is_the_masked_cross_entropy_of_the_decoder_logits(cache):  # noqa: F811
    config = text_config(cache, "t5")
    config.model.encoder.dropout_rate = 0.0
    tokens = _rows(config)
    batch = {"tokens": tokens, "index": np.arange(16, dtype=np.int32)}
    state, step, method = _build(config, jax.devices()[:1], batch)
    prepared = jax.device_get(step.prepare(state.rng, state.step, batch))
    variables = {"params": state.params, **state.variables}
    logits = np.asarray(method.logits(variables, prepared["inputs"], prepared["targets"]),
                        np.float64)
    y = prepared["targets"]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    m = y != f.PAD
    want = float(np.sum(nll * m) / np.sum(m))
    loss, (metrics, _) = method.loss(state.params, state.variables, state.extra, prepared,
                                     jax.random.key(0), 0)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    acc = float(np.sum((logits.argmax(-1) == y) & m) / np.sum(m))
    np.testing.assert_allclose(float(metrics["target_acc"]), acc, rtol=1e-6)
    # The decoder is causal: logits at t do not change when targets after t change.
    y2 = y.copy()
    y2[:, 5:] = np.where(y2[:, 5:] != f.PAD, 7, f.PAD)
    logits2 = np.asarray(method.logits(variables, prepared["inputs"], y2))
    np.testing.assert_allclose(logits2[:, :6], logits[:, :6], rtol=1e-4, atol=1e-5)


def test_t5_tiny_trains_and_evaluates_end_to_end(tmp_path, cache):  # noqa: F811
    config = text_config(cache, "t5")
    summary = run(config, tmp_path / "run")
    kinds = [r["kind"] for r in summary["results"]]
    assert kinds == ["span_accuracy", "linear", "linear_random_init"]
    span = summary["results"][0]
    assert 0.0 < span["accuracy"] < 1.0
    np.testing.assert_allclose(span["perplexity"], np.exp(span["span_loss"]), rtol=1e-6)
    # Every held-out target token is scored once: Σ over rows of (dropped + spans + EOS).
    corpus = f.load_corpus(config.data)
    rows = f.pack(corpus.test_ids, config.data, config.seed + 1)["tokens"]
    method = get_method("t5")(config, make_mesh(config, devices=jax.devices()[:1]))
    _, targets = jax.device_get(method.corrupt(rows, jax.random.key(0)))
    assert span["target_tokens"] == int(np.sum(targets != f.PAD))
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logged] == [2, 4] and all(np.isfinite(x["loss"]) for x in logged)


def test_one_t5_step_is_the_same_on_1_and_8_devices(cache):  # noqa: F811
    """The corruption drawn on 8 devices equals the one drawn on 1, and on the same inputs one
    optimizer step (dropout on) gives the same params on 1 and 8 devices."""
    config = text_config(cache, "t5")
    config.optim.warmup_steps = 0
    batch = {"tokens": _rows(config), "index": np.arange(16, dtype=np.int32)}
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, inputs8 = _one_step(config, jax.devices(), batch, inputs=inputs1)
    own8 = _prepared(config, jax.devices(), batch)
    for k in ("inputs", "targets"):
        np.testing.assert_array_equal(own8[k], inputs1[k])
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(p1)[0], jax.tree.leaves(p8),
                            strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("field,value,match", [
    ("masking.noise_density", 1.2, r"config.masking.noise_density=1.2 must be in \(0, 1\)"),
    ("data.num_sentinels", 1, r"config.data.num_sentinels=1 is fewer than the \d+ noise spans"),
])
def test_bad_t5_config_is_one_clear_line(cache, field, value, match):  # noqa: F811
    config = text_config(cache, "t5")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        get_method("t5")(config, make_mesh(config, devices=jax.devices()[:1]))
