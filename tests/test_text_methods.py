"""BERT end to end through ``jssl.train.run.run`` on real fortunes (tiny preset), and one BERT
step on 1 vs 8 devices."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from stat_bounds import binomial_sigma, within
from test_engine import ROOT, _build, _one_step, _prepared, assert_same_step, load_experiment

from jssl.data import fortunes as f
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = [pytest.mark.xdist_group("text_methods"),
              pytest.mark.skipif(not Path(f.DEFAULT_ROOT).is_dir(),
                                 reason="Debian fortunes not installed")]


def text_config(cache: Path, experiment: str):
    """The tiny preset of ``experiments/<experiment>.py`` with its tokenizer cached in ``cache``."""
    config = load_experiment(ROOT / "experiments" / f"{experiment}.py").get_config("tiny")
    config.data.cache_dir = str(cache)
    return config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("spm")


def test_bert_tiny_trains_and_evaluates_end_to_end(tmp_path, cache):
    config = text_config(cache, "bert")
    summary = run(config, tmp_path / "run")
    kinds = [r["kind"] for r in summary["results"]]
    assert kinds == ["mlm_accuracy", "linear", "linear_random_init"]
    mlm = summary["results"][0]
    assert 0.0 <= mlm["accuracy"] <= 1.0 and np.isfinite(mlm["mlm_loss"])
    # Held-out masking: 15 % of the test rows' ordinary tokens (binomial bound).
    corpus = f.load_corpus(config.data)
    rows = f.pack(corpus.test_ids, config.data, config.seed + 1)["tokens"]
    eligible = int(np.sum(~np.isin(rows, f.special_ids())))
    within(mlm["masked_tokens"] / eligible, 0.15, binomial_sigma(0.15, eligible))
    for r in summary["results"][1:]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["label_fraction"] == 1.0
    # The run holds its tokenizer, its metrics and its results.
    assert (tmp_path / "run" / "tokenizer.model").read_bytes() == corpus.tokenizer_path.read_bytes()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(x) for x in lines]
    assert [x["step"] for x in logged] == [2, 4] and all(np.isfinite(x["loss"]) for x in logged)
    assert 0.0 <= logged[-1]["nsp_acc"] <= 1.0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["results"] == summary["results"]
    assert saved["train_examples"] == len(f.pack(corpus.train_ids, config.data, 0)["tokens"])


def test_one_bert_step_is_the_same_on_1_and_8_devices(cache):
    """Static masks made on 8 devices equal those made on 1, and on the same inputs one
    optimizer step (dropout on) gives the same params on 1 and 8 devices."""
    config = text_config(cache, "bert")
    config.optim.warmup_steps = 0
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, config.data.vocab_size, (16, 32)).astype(np.int32)
    tokens[:, 0], tokens[:, 15], tokens[:, -1], tokens[::2, 24:] = f.CLS, f.SEP, f.SEP, f.PAD
    segments = np.zeros_like(tokens)
    segments[:, 16:] = 1
    segments[tokens == f.PAD] = 0
    batch = {"tokens": tokens, "segment_ids": segments,
             "nsp_label": np.arange(16, dtype=np.int32) % 2,
             "index": np.arange(16, dtype=np.int32)}
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, inputs8 = _one_step(config, jax.devices(), batch, inputs=inputs1)
    own8 = _prepared(config, jax.devices(), batch)
    for k in ("inputs", "labels", "weights"):
        np.testing.assert_array_equal(own8[k], inputs1[k])
    assert inputs1["weights"].sum() > 0
    assert_same_step(config, batch, (p1, l1), (p8, l8))


def test_simcse_loss_is_nt_xent_of_two_dropout_views(cache):
    """Without dropout the two views coincide and the loss equals a NumPy NT-Xent (T = 0.05) of
    duplicated embeddings; with dropout the views differ."""
    config = text_config(cache, "simcse")
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, config.data.vocab_size, (16, 32)).astype(np.int32)
    tokens[:, 0], tokens[:, -1] = f.CLS, f.SEP
    batch = {"tokens": tokens, "index": np.arange(16, dtype=np.int32)}
    key = jax.random.key(3)
    for rate in (0.0, 0.1):
        config.model.encoder.dropout_rate = config.model.encoder.attention_dropout_rate = rate
        state, _, method = _build(config, jax.devices(), batch)
        variables = {"params": state.params, **state.variables}
        loss, (metrics, _) = method.loss(state.params, state.variables, {}, batch, key, 0)
        if rate == 0.0:
            z = np.asarray(method._apply(variables, tokens)["pooled"], np.float64)
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            both = np.concatenate([z, z])
            logits = both @ both.T / 0.05
            np.fill_diagonal(logits, -np.inf)
            n = len(z)
            pos = logits[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)]
            ref = np.mean(np.log(np.exp(logits).sum(1)) - pos)
            np.testing.assert_allclose(float(loss), ref, rtol=1e-4)
            np.testing.assert_allclose(float(metrics["view_cosine"]), 1.0, rtol=1e-5)
        else:
            assert float(metrics["view_cosine"]) < 1.0 - 1e-4
