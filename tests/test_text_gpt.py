"""GPT end to end (held-out perplexity against a NumPy recomputation, n-gram baselines),
deterministic ``jssl generate``, and RoBERTa end to end, on real fortunes (tiny presets)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import jax
import numpy as np
import pytest
from test_text_methods import text_config

from jssl import cli
from jssl.data import fortunes as f
from jssl.evaluate.ngram import ngram_perplexities
from jssl.methods.gpt import generate_text
from jssl.train.loop import train
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = [pytest.mark.xdist_group("text_gpt"),
              pytest.mark.skipif(not Path(f.DEFAULT_ROOT).is_dir(),
                                 reason="Debian fortunes not installed")]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpt")
    config = text_config(tmp / "spm", "gpt")
    return config, tmp / "run", run(config, tmp / "run")


def test_gpt_perplexity_and_baselines(gpt_run):
    config, workdir, summary = gpt_run
    res = {r["kind"]: r for r in summary["results"]}
    assert list(res) == ["perplexity", "perplexity_unigram", "perplexity_bigram", "linear",
                         "linear_random_init"]
    corpus = f.load_corpus(config.data)
    seq = config.data.seq_len
    test = f.pack_contiguous(corpus.test_ids, seq, cls=False)
    train_rows = f.pack_contiguous(corpus.train_ids, seq, cls=False)
    base = ngram_perplexities(train_rows, test, config.data.vocab_size)
    assert res["perplexity_unigram"]["value"] == pytest.approx(base["unigram"])
    assert res["perplexity_bigram"]["value"] == pytest.approx(base["bigram"])
    assert 1.0 < base["bigram"] < base["unigram"] < config.data.vocab_size
    # GPT perplexity recomputed in NumPy from the restored model's logits on all test rows.
    state, method = train(config, workdir, restore_only=True)
    logits = np.asarray(method.model.apply({"params": jax.device_get(state.params)}, test),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = (test[:, :-1] != f.PAD) & (test[:, 1:] != f.PAD)
    picked = np.take_along_axis(logp[:, :-1], test[:, 1:, None], -1)[..., 0]
    assert res["perplexity"]["tokens"] == int(valid.sum())
    np.testing.assert_allclose(res["perplexity"]["value"], np.exp(-picked[valid].mean()),
                               rtol=1e-4)


def test_generation_is_deterministic_for_a_fixed_key(gpt_run):
    config, workdir, _ = gpt_run
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=None, num_samples=3)
    a = generate_text(workdir, ["A fool", "Time"], seed=0, **kw)
    b = generate_text(workdir, ["A fool", "Time"], seed=0, **kw)
    c = generate_text(workdir, ["A fool", "Time"], seed=1, **kw)
    assert a == b and a != c
    assert all(s.startswith("A fool") for s in a[0]) and len(a[1]) == 3
    greedy = generate_text(workdir, ["A fool"], seed=5, max_new_tokens=8, temperature=0.0,
                           num_samples=2)[0]
    assert greedy[0] == greedy[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["generate", f"--workdir={workdir}", "--prompt=A fool",
                         "--max_new_tokens=8", "--temperature=1.0", "--top_k=0",
                         "--num_samples=3", "--seed=0"]) == 0
    assert out.getvalue() == "\n---\n".join(a[0]) + "\n\n"
    with pytest.raises(ValueError, match=r"max_new_tokens=40 exceeds seq_len=32"):
        generate_text(workdir, ["A fool"], max_new_tokens=40)


def test_roberta_tiny_trains_and_evaluates_end_to_end(tmp_path):
    config = text_config(tmp_path / "spm", "roberta")
    summary = run(config, tmp_path / "run")
    assert [r["kind"] for r in summary["results"]] == ["mlm_accuracy", "linear",
                                                       "linear_random_init"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in summary["results"])
    assert summary["results"][0]["masked_tokens"] > 0
