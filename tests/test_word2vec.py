"""word2vec (skip-gram, negative sampling) on real fortunes: pairs, subsampling, negatives and
loss against NumPy references; the tiny preset end to end with `jssl neighbours`; one step on
1 vs 8 devices; bad config."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stat_bounds import binomial_sigma, within
from test_engine import _one_step, _prepared
from test_text_methods import cache, text_config  # noqa: F401  (fixture)

from jssl import cli
from jssl.data import fortunes as f
from jssl.evaluate.neighbours import cooccurrence_check, nearest
from jssl.methods import get_method
from jssl.methods.word2vec import keep_probability, skipgram_pairs, subsample
from jssl.train.mesh import make_mesh
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = [pytest.mark.xdist_group("word2vec"),
              pytest.mark.skipif(not Path(f.DEFAULT_ROOT).is_dir(),
                                 reason="Debian fortunes not installed")]


def _method(config):
    return get_method("word2vec")(config, make_mesh(config, devices=jax.devices()[:1]))


def _reference_pairs(tokens, keep, window, ignore):
    """NumPy: drop unkept and ignored tokens, then pair positions within the centre's window
    in the same fortune (fortunes end at [SEP])."""
    out = set()
    for b, row in enumerate(tokens):
        seg = np.cumsum(row == f.SEP)
        kept = [(t, s) for t, s, k in zip(row, seg, keep[b], strict=True)
                if k and t not in ignore]
        for i, (c, sc) in enumerate(kept):
            for j, (o, so) in enumerate(kept):
                if i != j and abs(i - j) <= window[b, i] and sc == so:
                    out.add((b, i, int(c), int(o)))
    return out


def test_pairs_match_a_numpy_enumeration(cache):  # noqa: F811
    config = text_config(cache, "word2vec")
    corpus = f.load_corpus(config.data)
    tokens = f.pack(corpus.train_ids, config.data, 0)["tokens"][:8]
    tokens[0, 5] = f.UNK  # an unknown piece is skipped, as the C tool skips unknown words
    rng = np.random.default_rng(0)
    keep = rng.random(tokens.shape) < 0.7
    window = rng.integers(1, 4, tokens.shape)
    ignore = f.special_ids()
    c, o, m = jax.device_get(skipgram_pairs(jnp.asarray(tokens), jnp.asarray(keep),
                                            jnp.asarray(window), 3, ignore))
    got = {(b, i, int(c[b, i, k]), int(o[b, i, k])) for b, i, k in np.argwhere(m)}
    want = _reference_pairs(tokens, keep, window, ignore)
    assert got == want and len(want) > 100


def test_subsampling_and_negatives_follow_their_distributions(cache):  # noqa: F811
    counts = np.array([0, 10, 1000, 100_000], np.float64)
    t = 1e-3
    freq = counts / counts.sum()
    want = np.minimum(np.sqrt(t / freq[1:]) + t / freq[1:], 1.0)
    np.testing.assert_allclose(keep_probability(counts, t)[1:], want)
    assert keep_probability(counts, 0.0).tolist() == [1.0] * 4
    tokens = jnp.full((200, 100), 3, jnp.int32)
    rate = float(jnp.mean(subsample(jax.random.key(1), tokens, np.array([1, 1, 1, 0.3]))))
    within(rate, 0.3, binomial_sigma(0.3, tokens.size))
    # Negatives ~ count^0.75 over non-special pieces (per-id binomial bounds).
    config = text_config(cache, "word2vec")
    method = _method(config)
    corpus = f.load_corpus(config.data)
    rows = f.pack(corpus.train_ids, config.data, 0)["tokens"][:16]
    draws = np.concatenate([np.ravel(jax.device_get(
        method.prepare({"tokens": jnp.asarray(rows)}, jax.random.key(s))["negatives"]))
        for s in range(4)])
    c = np.bincount(np.concatenate(corpus.train_ids), minlength=config.data.vocab_size) ** 0.75
    c[list(f.special_ids())] = 0
    p = c / c.sum()
    seen = np.bincount(draws, minlength=len(p)) / len(draws)
    assert seen[list(f.special_ids())].sum() == 0
    for i in np.argsort(-p)[:20]:
        within(seen[i], p[i], binomial_sigma(p[i], len(draws)))


def test_loss_is_the_negative_sampling_objective(cache):  # noqa: F811
    config = text_config(cache, "word2vec")
    method = _method(config)
    rng = np.random.default_rng(0)
    v_in = rng.normal(size=(config.data.vocab_size, 16)).astype(np.float32) * 0.3
    v_out = rng.normal(size=(config.data.vocab_size, 16)).astype(np.float32) * 0.3
    batch = {"centres": rng.integers(5, 200, (4, 6)), "contexts": rng.integers(5, 200, (4, 6)),
             "negatives": rng.integers(5, 200, (4, 6, 2)), "mask": rng.random((4, 6)) < 0.6}
    loss, (metrics, _) = method.loss({"input": v_in, "output": v_out}, {}, {}, batch, None, 0)
    v = v_in[batch["centres"]].astype(np.float64)
    pos = np.sum(v * v_out[batch["contexts"]], -1)
    neg = np.einsum("abd,abkd->abk", v, v_out[batch["negatives"]])
    ell = np.log1p(np.exp(-pos)) + np.log1p(np.exp(neg)).sum(-1)
    m = batch["mask"]
    np.testing.assert_allclose(float(loss), np.sum(ell * m) / np.sum(m), rtol=1e-5)
    assert int(metrics["pairs"]) == int(m.sum())


def test_neighbour_check_on_a_hand_made_embedding():
    """Three pairs always co-occur (the top-PMI pairs) and their partners share a vector, so
    each is the other's nearest neighbour; random frequent pairs of random vectors are not."""
    rng = np.random.default_rng(0)
    docs = [np.array(p) for p in ([10, 11], [12, 13], [14, 15]) for _ in range(50)]
    docs += [rng.choice(np.arange(16, 40), 2, replace=False) for _ in range(400)]
    counts = np.bincount(np.concatenate(docs), minlength=40).astype(float)
    vectors = rng.normal(size=(40, 8))
    for a in (10, 12, 14):
        vectors[a + 1] = vectors[a]
    assert nearest(vectors, [10, 13], 1).tolist() == [[11], [12]]
    out = cooccurrence_check(vectors, docs, counts, (0, 1, 2, 3), min_count=20, min_pair=20,
                             num_pairs=10, k=1)
    assert sorted(map(tuple, out["top_pairs"])) == [(10, 11), (12, 13), (14, 15)]
    assert out["pmi_rate"] == 1.0 and out["pairs"] == 3 and out["random_rate"] < 0.5


def test_word2vec_tiny_end_to_end_and_neighbours_cli(tmp_path, cache):  # noqa: F811
    config = text_config(cache, "word2vec")
    summary = run(config, tmp_path / "run")
    assert [r["kind"] for r in summary["results"]] == ["neighbour_rate", "linear",
                                                       "linear_random_init"]
    check = summary["results"][0]
    assert 0.0 <= check["accuracy"] <= 1.0 and 0.0 <= check["random_rate"] <= 1.0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["neighbours", f"--workdir={tmp_path / 'run'}", "--word=the",
                         "--k=4"]) == 0
    line = out.getvalue().strip()
    assert line.startswith("the (") and line.count(",") == 3
    sims = [float(x.split()[-1]) for x in line.split("): ")[1].split(", ")]
    assert sims == sorted(sims, reverse=True)


def test_one_word2vec_step_is_the_same_on_1_and_8_devices(cache):  # noqa: F811
    config = text_config(cache, "word2vec")
    config.optim.warmup_steps = 0
    corpus = f.load_corpus(config.data)
    batch = {"tokens": f.pack(corpus.train_ids, config.data, 0)["tokens"][:16],
             "index": np.arange(16, dtype=np.int32)}
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, _ = _one_step(config, jax.devices(), batch, inputs=inputs1)
    own8 = _prepared(config, jax.devices(), batch)
    for k in ("centres", "contexts", "mask", "negatives"):
        np.testing.assert_array_equal(own8[k], inputs1[k])
    np.testing.assert_allclose(l8, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("field,value,match", [
    ("word2vec.window", 0, r"config.word2vec.window=0 must be >= 1"),
    ("word2vec.negatives", 0, r"config.word2vec.negatives=0 must be >= 1"),
    ("word2vec.subsample", -1.0, r"config.word2vec.subsample=-1.0 must be >= 0"),
])
def test_bad_word2vec_config_is_one_clear_line(cache, field, value, match):  # noqa: F811
    config = text_config(cache, "word2vec")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        _method(config)
