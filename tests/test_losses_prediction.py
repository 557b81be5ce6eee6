"""Prediction losses vs float64 NumPy references, identities, 1-vs-N devices, bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharded_check import global_value_and_grad, make_mesh, sharded_value_and_grad

from jssl.losses import prediction as P

RNG = np.random.default_rng(0)


# ------------------------------------------------------------- NumPy references
def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, labels, smoothing=0.0):
    """Per-position CE with smoothed one-hot targets, float64."""
    logp = np_log_softmax(logits)
    c = logp.shape[-1]
    y = np.eye(c)[labels] * (1 - smoothing) + smoothing / c
    return -(y * logp).sum(-1)


def np_next_token(logits, tokens, mask):
    num, den = 0.0, 0.0
    b, t, _ = logits.shape
    for i in range(b):
        for j in range(t - 1):
            if mask[i, j] and mask[i, j + 1]:
                num += np_ce(logits[i, j], tokens[i, j + 1])
                den += 1
    return num / den


def np_mae(pred, target, mask, norm_pix, eps=1e-6):
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    num, den = 0.0, 0.0
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            x = target[i, j]
            if norm_pix:
                x = (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean() + eps)
            num += mask[i, j] * np.mean((pred[i, j] - x) ** 2)
            den += mask[i, j]
    return num / den


def token_batch(b=8, t=6, v=11, seed=0):
    r = np.random.default_rng(seed)
    logits = r.normal(size=(b, t, v)).astype(np.float32) * 2
    labels = r.integers(0, v, size=(b, t)).astype(np.int32)
    return logits, labels


def uneven_weights(b=8, t=6, seed=1):
    """0/1 weights whose per-row counts differ a lot; row 3 is empty."""
    r = np.random.default_rng(seed)
    keep = np.arange(b)[:, None] + 1  # row i keeps about i+1 positions
    w = (r.permuted(np.tile(np.arange(t), (b, 1)), axis=1) < keep).astype(np.float32)
    w[3] = 0.0
    return w


# ------------------------------------------------------------------ references
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_matches_numpy(smoothing):
    logits = RNG.normal(size=(12, 7)).astype(np.float32)
    labels = RNG.integers(0, 7, size=12)
    got = P.classification(logits, labels, label_smoothing=smoothing)
    np.testing.assert_allclose(got, np_ce(logits, labels, smoothing).mean(), rtol=1e-5)


def test_classification_leading_axes_mean_over_all_positions():
    logits, labels = token_batch(4, 5, 9)
    got = P.classification(logits, labels)
    np.testing.assert_allclose(got, np_ce(logits, labels).mean(), rtol=1e-5)


def test_masked_lm_matches_numpy():
    logits, labels = token_batch()
    w = uneven_weights()
    ref = (w * np_ce(logits, labels)).sum() / w.sum()
    np.testing.assert_allclose(P.masked_lm(logits, labels, w), ref, rtol=1e-5)


def test_masked_lm_uniform_logits_is_log_vocab():
    v = 37
    logits = np.full((2, 5, v), 3.25, np.float32)
    labels = RNG.integers(0, v, size=(2, 5))
    w = (RNG.random((2, 5)) < 0.5).astype(np.float32)
    w[0, 0] = 1.0
    np.testing.assert_allclose(P.masked_lm(logits, labels, w), np.log(v), rtol=1e-6)


def test_masked_lm_empty_weights_is_zero_not_nan():
    logits, labels = token_batch(2, 3, 5)
    loss, grad = jax.value_and_grad(P.masked_lm)(logits, labels, np.zeros((2, 3), np.float32))
    assert float(loss) == 0.0 and np.all(np.isfinite(grad))


def test_next_token_matches_loop_reference():
    logits, tokens = token_batch()
    mask = np.ones((8, 6), bool)
    mask[1, 4:] = False  # right padding
    mask[2, :2] = False  # left padding
    mask[5, 3] = False  # hole: drops targets 3 and 4
    got = P.next_token(logits, tokens, mask)
    np.testing.assert_allclose(got, np_next_token(logits, tokens, mask), rtol=1e-5)


def test_next_token_shift_uses_following_token():
    # logits put all mass on tokens[:, t+1]: the loss is ~0 only if the shift is right.
    _, tokens = token_batch(3, 5, 6)
    logits = 50.0 * np.eye(6, dtype=np.float32)[np.roll(tokens, -1, axis=1)]
    assert float(P.next_token(logits, tokens, np.ones((3, 5)))) < 1e-6
    assert float(P.next_token(50.0 * np.eye(6, dtype=np.float32)[tokens], tokens,
                              np.ones((3, 5)))) > 1.0


def test_span_corruption_matches_numpy():
    logits, targets = token_batch(4, 9, 13, seed=3)
    mask = np.arange(9)[None, :] < np.array([9, 4, 1, 6])[:, None]
    ref = (mask * np_ce(logits, targets)).sum() / mask.sum()
    np.testing.assert_allclose(P.span_corruption(logits, targets, mask), ref, rtol=1e-5)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_matches_loop_reference(norm_pix):
    pred = RNG.normal(size=(3, 5, 12)).astype(np.float32)
    target = (RNG.normal(size=(3, 5, 12)) * 3 + 1).astype(np.float32)
    mask = (RNG.random((3, 5)) < 0.6).astype(np.float32)
    mask[0, 0] = 1.0
    got = P.mae(pred, target, mask, norm_pix=norm_pix)
    np.testing.assert_allclose(got, np_mae(pred, target, mask, norm_pix), rtol=1e-5)


def test_mae_identities_and_stop_gradient():
    target = RNG.normal(size=(2, 4, 6)).astype(np.float32)
    mask = np.ones((2, 4), np.float32)
    assert float(P.mae(target, target, mask, norm_pix=False)) == 0.0
    x = np.asarray(target, np.float64)
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    assert float(P.mae(normed.astype(np.float32), target, mask)) < 1e-10
    pred = RNG.normal(size=target.shape).astype(np.float32)
    g_target = jax.grad(P.mae, argnums=1)(pred, target, mask)
    assert np.all(np.asarray(g_target) == 0.0)


# ------------------------------------------------------------------- bfloat16
def test_argmax_equals_matches_numpy_argmax_with_ties_and_bad_labels():
    """Coarse integer logits make ties at the maximum common; NumPy's argmax is the first."""
    rng = np.random.default_rng(7)  # its own seed: the module RNG's state depends on test order
    logits = rng.integers(-3, 4, size=(6, 9, 17)).astype(np.float32)
    logits[0, 0] = 2.0  # a whole row tied
    labels = rng.integers(-2, 19, size=(6, 9))  # some outside [0, 17)
    labels[1] = np.argmax(logits[1], -1)  # and some hits (random labels alone may give none)
    want = (np.argmax(logits, -1) == labels) & (labels >= 0) & (labels < 17)
    assert 0 < want.sum() < want.size
    got = jax.jit(P.argmax_equals)(logits, labels)
    np.testing.assert_array_equal(np.asarray(got), want)
    # asking every class of every row: exactly one hit, at the first maximum
    every = np.broadcast_to(np.arange(17), (6, 9, 17))
    got = P.argmax_equals(np.repeat(logits[..., None, :], 17, axis=-2), every)
    np.testing.assert_array_equal(np.asarray(got), every == np.argmax(logits, -1)[..., None])


def test_bfloat16_logits_scored_in_float32():
    logits, labels = token_batch()
    w = uneven_weights()
    lb = jnp.asarray(logits, jnp.bfloat16)
    for fn, args in [
        (P.masked_lm, (labels, w)),
        (P.next_token, (labels, w > 0)),
        (P.span_corruption, (labels, w)),
    ]:
        got = fn(lb, *args)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, fn(np.asarray(lb, np.float32), *args), rtol=1e-5)
        np.testing.assert_allclose(got, fn(logits, *args), rtol=2e-2)
    got = P.classification(lb[:, 0], labels[:, 0])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, P.classification(logits[:, 0], labels[:, 0]), rtol=2e-2)
    pb = jnp.asarray(logits, jnp.bfloat16)
    got = P.mae(pb, pb, w)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, P.mae(logits, logits, w), rtol=2e-2, atol=1e-3)


# ------------------------------------------------------------ 1 vs N devices
def sharded_cases():
    """name -> (loss, args, batch_argnums, kwargs); weights uneven across shards."""
    logits, labels = token_batch()
    w = uneven_weights()
    r = np.random.default_rng(5)
    pred, target = (r.normal(size=(8, 6, 10)).astype(np.float32) for _ in range(2))
    return {
        "masked_lm": (P.masked_lm, (logits, labels, w), (0, 1, 2), {}),
        "next_token": (P.next_token, (logits, labels, w), (0, 1, 2), {}),
        "span_corruption": (P.span_corruption, (logits, labels, w), (0, 1, 2), {}),
        "mae": (P.mae, (pred, target, w), (0, 1, 2), {}),
        "classification": (P.classification, (logits, labels), (0, 1),
                           {"label_smoothing": 0.1}),
    }


@functools.cache
def global_result(name):
    """One-device value and d/d(arg 0), compiled once and shared by every mesh."""
    fn, args, _, kw = sharded_cases()[name]
    return global_value_and_grad(fn, args, grad_argnums=(0,), **kw)


@pytest.mark.parametrize("mesh_shape,axis_name",
                         [((2,), "data"), ((4,), "data"), ((8,), "data"), ((2, 4), ("a", "b"))])
@pytest.mark.parametrize("name", list(sharded_cases()))
def test_sharded_equals_global(name, mesh_shape, axis_name):
    # sharded_check.assert_sharded_equal, with the one-device side compiled once per loss
    fn, args, batch_argnums, kw = sharded_cases()[name]
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    vn, (gn,) = sharded_value_and_grad(fn, args, batch_argnums=batch_argnums,
                                       mesh=make_mesh(mesh_shape, names), axis_name=axis_name,
                                       grad_argnums=(0,), **kw)
    v1, (g1,) = global_result(name)
    np.testing.assert_allclose(vn, v1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gn, g1, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(g1)).max() > 0  # the gradient under test is not trivially 0


# ----------------------------------------------------------------- bad input
def test_bad_inputs_raise():
    logits, labels = token_batch(2, 4, 5)
    w = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="labels"):
        P.masked_lm(np.zeros((2, 5, 5)), labels, w)  # labels [B,T] vs logits [B,T+1,V]
    with pytest.raises(ValueError, match="weights"):
        P.masked_lm(logits, labels, np.ones((2, 1)))
    with pytest.raises(ValueError, match="labels"):
        P.masked_lm(logits, labels.astype(np.float32), w)
    with pytest.raises(ValueError, match="logits"):
        P.masked_lm(logits[0], labels[0], w[0])
    with pytest.raises(ValueError, match="tokens"):
        P.next_token(logits, labels[:, :3], w)
    with pytest.raises(ValueError, match="mask"):
        P.next_token(logits, labels, w[:, :3])
    with pytest.raises(ValueError, match="tokens"):
        P.next_token(logits[:, :1], labels[:, :1], w[:, :1])
    with pytest.raises(ValueError, match="targets"):
        P.span_corruption(logits, labels[:1], w)
    with pytest.raises(ValueError, match="mask"):
        P.span_corruption(logits, labels, w.T)
    with pytest.raises(ValueError, match="labels"):
        P.classification(logits, labels[:, 0])
    with pytest.raises(ValueError, match="label_smoothing"):
        P.classification(logits, labels, label_smoothing=1.0)
    with pytest.raises(ValueError, match="target"):
        P.mae(logits, logits[:, :, :3], w)
    with pytest.raises(ValueError, match="mask"):
        P.mae(logits, logits, w[:, :2])
    with pytest.raises(ValueError, match="pred"):
        P.mae(logits[0], logits[0], w[0])
    with pytest.raises(ValueError, match="eps"):
        P.mae(logits, logits, w, eps=0.0)
