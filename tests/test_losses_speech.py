"""wav2vec 2.0 losses vs float64 NumPy references, sampler statistics, 1-vs-N devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS
from sharded_check import assert_sharded_equal, make_mesh, sharded_value_and_grad

from jssl.losses import speech as S

RNG = np.random.default_rng(0)
KEY = jax.random.key(42)
# jitted once per shape: eager dispatch of the vmapped sampler would compile op by op
sample = jax.jit(S.sample_negatives, static_argnums=2)
# (loss, metrics); the temperature is traced, so one compile serves every test of a dtype
w2v = jax.jit(functools.partial(S.wav2vec2, num_negatives=5, return_metrics=True))
w2v_grad = jax.jit(jax.value_and_grad(S.wav2vec2, argnums=(0, 1)),
                   static_argnames=("num_negatives",))


# ------------------------------------------------------------- NumPy references
def np_wav2vec2(context, quantized, mask, neg_idx, temperature):
    """Loop reference from given distractor indices: (loss, accuracy, count)."""
    c64, q64 = np.asarray(context, np.float64), np.asarray(quantized, np.float64)
    qraw = np.asarray(quantized)
    total, hits, count = 0.0, 0, 0
    for b in range(c64.shape[0]):
        if mask[b].sum() < 2:
            continue
        for t in np.flatnonzero(mask[b]):
            c = c64[b, t]

            def cos(v, c=c):
                return c @ v / (max(np.linalg.norm(c), 1e-8) * max(np.linalg.norm(v), 1e-8))

            logits = [cos(q64[b, t]) / temperature]
            for n in neg_idx[b, t]:
                same = np.array_equal(qraw[b, n], qraw[b, t])
                logits.append(-np.inf if same else cos(q64[b, n]) / temperature)
            logits = np.array(logits)
            m = logits.max()
            total += m + np.log(np.exp(logits - m).sum()) - logits[0]
            hits += int(logits[0] > logits[1:].max())
            count += 1
    return total / max(count, 1e-8), hits / max(count, 1e-8), count


def np_perplexity(probs, mask=None):
    p = np.asarray(probs, np.float64)
    g, v = p.shape[-2:]
    p = p.reshape(-1, g, v)
    w = np.ones(len(p)) if mask is None else np.asarray(mask, np.float64).reshape(-1)
    p_bar = (p * w[:, None, None]).sum(0) / w.sum()
    return np.exp(-(p_bar * np.log(p_bar + 1e-7)).sum(-1)).sum()


def speech_batch(b=8, t=10, d=6, seed=0, codebook=None):
    r = np.random.default_rng(seed)
    context = r.normal(size=(b, t, d)).astype(np.float32)
    if codebook is None:
        quantized = r.normal(size=(b, t, d)).astype(np.float32)
    else:  # few distinct vectors: many distractors equal their positive
        quantized = r.normal(size=(codebook, d)).astype(np.float32)[r.integers(0, codebook,
                                                                               (b, t))]
    counts = np.array([10, 1, 6, 0, 3, 8, 2, 5])[:b] % (t + 1)
    mask = np.zeros((b, t), bool)
    for i, n in enumerate(counts):
        mask[i, r.choice(t, n, replace=False)] = True
    return context, quantized, mask


# ------------------------------------------------------------------- sampler
def test_sampler_only_other_masked_steps_of_the_same_row():
    _, _, mask = speech_batch()
    idx = np.asarray(sample(KEY, mask, 5))
    assert idx.shape == (8, 10, 5) and idx.dtype == np.int32
    assert np.all((idx >= 0) & (idx < 10))
    checked = 0
    for b in range(8):
        if mask[b].sum() < 2:
            continue
        for t in np.flatnonzero(mask[b]):
            assert np.all(idx[b, t] != t), "sampled the step itself"
            assert np.all(mask[b, idx[b, t]]), "sampled an unmasked step"
            checked += 1
    assert checked == 10 + 6 + 3 + 8 + 2 + 5


def test_sampler_roughly_uniform_chi_square():
    t, k = 40, 3000
    mask = np.zeros((1, t), bool)
    mask[0, ::3] = True  # 14 masked steps, 13 candidates each
    steps = np.flatnonzero(mask[0])
    n = len(steps)
    idx = np.asarray(sample(KEY, mask, k))[0]
    chi2, df = 0.0, 0
    for t_ in steps:
        others = steps[steps != t_]
        counts = np.array([(idx[t_] == o).sum() for o in others])
        assert counts.sum() == k
        expected = k / (n - 1)
        chi2 += ((counts - expected) ** 2 / expected).sum()
        df += n - 2
    # chi2 has mean df and std sqrt(2 df); a 6-sigma bound cannot trip by chance.
    assert chi2 < df + 6 * np.sqrt(2 * df), (chi2, df)


def test_sampler_independent_of_device_split():
    _, _, mask = speech_batch()
    glob = np.asarray(sample(KEY, mask, 5))
    mesh = make_mesh((4,), ("data",))  # 2 rows per device: local row offsets matter
    f = jax.shard_map(lambda m: S.sample_negatives(KEY, m, 5, axis_name="data"), mesh=mesh,
                      in_specs=PS("data"), out_specs=PS("data"))
    placed = jax.device_put(mask, NamedSharding(mesh, PS("data")))
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(placed)), glob)
    # rows 0 and 5 with the same mask get different draws (the row index is folded in)
    same = np.concatenate([mask[:1], mask[1:5], mask[:1], mask[6:]])
    idx = np.asarray(sample(KEY, same, 5))
    assert not np.array_equal(idx[0], idx[5])


# ------------------------------------------------------------------ wav2vec2
@pytest.mark.parametrize("codebook", [None, 3])
def test_wav2vec2_matches_numpy_reference(codebook):
    context, quantized, mask = speech_batch(codebook=codebook)
    idx = np.asarray(sample(KEY, mask, 5))
    ref, ref_acc, ref_count = np_wav2vec2(context, quantized, mask, idx, 0.1)
    loss, metrics = w2v(context, quantized, mask, KEY, temperature=0.1)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], ref_acc, rtol=1e-6)
    assert float(metrics["count"]) == ref_count == 10 + 6 + 3 + 8 + 2 + 5
    if codebook is not None:  # the -inf branch really ran
        dup = sum(np.sum(np.all(quantized[b, idx[b, t]] == quantized[b, t], -1))
                  for b in range(8) for t in np.flatnonzero(mask[b]) if mask[b].sum() > 1)
        assert dup > 0
        _, g = w2v_grad(context, quantized, mask, KEY, num_negatives=5)
        assert all(np.all(np.isfinite(x)) for x in g)


def test_wav2vec2_no_usable_row_is_zero():
    context, quantized, _ = speech_batch()
    mask = np.zeros((8, 10), bool)
    mask[:, 4] = True  # one masked step per row: no distractor anywhere
    loss, grads = w2v_grad(context, quantized, mask, KEY, num_negatives=5)
    assert float(loss) == 0.0 and all(np.all(g == 0) for g in grads)


def test_wav2vec2_perfect_prediction_has_low_loss():
    _, quantized, mask = speech_batch()
    loss, _ = w2v(quantized, quantized, mask, KEY, temperature=0.01)
    assert float(loss) < 1e-3  # cos(q_t, q_t)=1 beats random distractors by far at κ=0.01


def test_wav2vec2_bfloat16_gives_float32():
    context, quantized, mask = speech_batch()
    cb, qb = jnp.asarray(context, jnp.bfloat16), jnp.asarray(quantized, jnp.bfloat16)
    got, _ = w2v(cb, qb, mask, KEY, temperature=0.1)
    assert got.dtype == jnp.float32
    ref, _ = w2v(np.asarray(cb, np.float32), np.asarray(qb, np.float32), mask, KEY,
                 temperature=0.1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(got, w2v(context, quantized, mask, KEY, temperature=0.1)[0],
                               rtol=3e-2)


@pytest.mark.parametrize("mesh_shape,axis_name",
                         [((2,), "data"), ((4,), "data"), ((8,), "data"), ((2, 4), ("a", "b"))])
def test_wav2vec2_sharded(mesh_shape, axis_name):
    # sharded_check.assert_sharded_equal, with the one-device side compiled once (w2v_grad)
    args = (*speech_batch(codebook=4), KEY)
    v1, g1 = w2v_grad(*args, num_negatives=5)
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    vn, gn = sharded_value_and_grad(S.wav2vec2, args, batch_argnums=(0, 1, 2),
                                    mesh=make_mesh(mesh_shape, names), axis_name=axis_name,
                                    grad_argnums=(0, 1), num_negatives=5)
    np.testing.assert_allclose(vn, v1, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, gn, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------- codebook diversity
def random_probs(shape, seed=0):
    z = np.random.default_rng(seed).normal(size=shape) * 2
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_codebook_matches_numpy():
    probs = random_probs((4, 6, 2, 8))
    ppl = np_perplexity(probs)
    np.testing.assert_allclose(S.codebook_perplexity(probs), ppl, rtol=1e-5)
    np.testing.assert_allclose(S.codebook_diversity(probs), (16 - ppl) / 16, rtol=1e-5)
    mask = RNG.random((4, 6)) < 0.5
    np.testing.assert_allclose(S.codebook_perplexity(probs, mask=mask),
                               np_perplexity(probs, mask), rtol=1e-5)


def test_codebook_identities():
    g, v = 2, 8
    uniform = np.full((5, 3, g, v), 1 / v, np.float32)
    np.testing.assert_allclose(S.codebook_perplexity(uniform), g * v, rtol=1e-5)
    np.testing.assert_allclose(S.codebook_diversity(uniform), 0.0, atol=1e-5)
    onehot = np.zeros((5, 3, g, v), np.float32)
    onehot[..., 0, 3] = 1.0
    onehot[..., 1, 6] = 1.0
    np.testing.assert_allclose(S.codebook_perplexity(onehot), g, rtol=1e-5)
    np.testing.assert_allclose(S.codebook_diversity(onehot), (g * v - g) / (g * v), rtol=1e-5)


def test_codebook_bfloat16_and_finite_gradient():
    probs = random_probs((8, 5, 2, 6))
    pb = jnp.asarray(probs, jnp.bfloat16)
    got = S.codebook_diversity(pb)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, S.codebook_diversity(np.asarray(pb, np.float32)), rtol=1e-5)
    onehot = np.eye(6, dtype=np.float32)[np.zeros((8, 5, 2), int)]
    assert np.all(np.isfinite(jax.jit(jax.grad(S.codebook_diversity))(onehot)))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_codebook_sharded(n):
    probs = random_probs((8, 5, 2, 6))
    mask = np.arange(5)[None, :] < np.array([5, 0, 1, 3, 5, 2, 4, 0])[:, None]
    assert_sharded_equal(S.codebook_diversity, (probs,), batch_argnums=(0,), n_devices=n)
    masked_ppl = lambda p, m, axis_name=None: S.codebook_perplexity(p, mask=m,
                                                                    axis_name=axis_name)
    assert_sharded_equal(masked_ppl, (probs, mask), batch_argnums=(0, 1), n_devices=n,
                         grad_argnums=(0,), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- bad input
def test_bad_inputs_raise():
    context, quantized, mask = speech_batch()
    with pytest.raises(ValueError, match="quantized"):
        S.wav2vec2(context, quantized[:, :9], mask, KEY)
    with pytest.raises(ValueError, match="mask_indices"):
        S.wav2vec2(context, quantized, mask[:, :9], KEY)
    with pytest.raises(ValueError, match="context"):
        S.wav2vec2(context[0], quantized[0], mask[0], KEY)
    with pytest.raises(ValueError, match="temperature"):
        S.wav2vec2(context, quantized, mask, KEY, temperature=0.0)
    with pytest.raises(ValueError, match="num_negatives"):
        S.wav2vec2(context, quantized, mask, KEY, num_negatives=0)
    with pytest.raises(ValueError, match="mask_indices"):
        S.sample_negatives(KEY, mask[0], 3)
    with pytest.raises(ValueError, match="probs"):
        S.codebook_diversity(np.ones((4, 8), np.float32) / 8)
    with pytest.raises(ValueError, match="mask"):
        S.codebook_perplexity(random_probs((4, 3, 2, 5)), mask=np.ones((4,), bool))
