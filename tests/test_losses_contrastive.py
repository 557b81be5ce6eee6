"""Contrastive and distillation losses: NumPy references, 1-vs-N devices, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharded_check import assert_sharded_equal, make_mesh

from jssl import losses

B, D, K = 16, 8, 12


def _randn(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------- NumPy references
def _norm(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(x):
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


def ref_nt_xent(z1, z2, t):
    z = _norm(np.concatenate([z1, z2]))
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        sims = [z[a] @ z[b] / t for b in range(2 * n) if b != a]
        total += _logsumexp(np.array(sims)) - z[a] @ z[pos] / t
    return total / (2 * n)


def ref_info_nce(q, p, negs, t):
    q, p, negs = _norm(q), _norm(p), _norm(negs)
    out = []
    for i in range(len(q)):
        logits = np.concatenate([[q[i] @ p[i]], negs[i] @ q[i]]) / t
        out.append(_logsumexp(logits) - logits[0])
    return np.mean(out)


def ref_clip(x, y, s):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    logits = s * x @ y.T
    i2t = [_logsumexp(logits[i]) - logits[i, i] for i in range(len(x))]
    t2i = [_logsumexp(logits[:, j]) - logits[j, j] for j in range(len(x))]
    return 0.5 * (np.mean(i2t) + np.mean(t2i))


def ref_siglip(x, y, s, b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-z * (s * x[i] @ y[j] + b)))
    return total / len(x)


def ref_dino(students, teachers, center, ts, tt):
    def softmax(v):
        e = np.exp(v - v.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    total, pairs = 0.0, 0
    for g, t in enumerate(teachers):
        p_t = softmax((np.asarray(t, np.float64) - center) / tt)
        for v, s in enumerate(students):
            if v == g:
                continue
            z = np.asarray(s, np.float64) / ts
            log_p = z - z.max(-1, keepdims=True)
            log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
            total += np.mean(-np.sum(p_t * log_p, -1))
            pairs += 1
    return total / pairs


# ------------------------------------------------------------- value vs NumPy
def test_nt_xent_matches_numpy():
    z1, z2 = _randn(0, B, D), _randn(1, B, D)
    np.testing.assert_allclose(losses.nt_xent(z1, z2, 0.1), ref_nt_xent(z1, z2, 0.1), rtol=1e-5)


def test_info_nce_matches_numpy():
    q, p, n = _randn(2, B, D), _randn(3, B, D), _randn(4, B, 5, D)
    np.testing.assert_allclose(losses.info_nce(q, p, n, 0.07), ref_info_nce(q, p, n, 0.07),
                               rtol=1e-5)


def test_moco_equals_info_nce_with_queue_as_negatives():
    q, k, queue = _randn(5, B, D), _randn(6, B, D), _randn(7, K, D)
    negs = np.broadcast_to(queue, (B, K, D))
    np.testing.assert_allclose(losses.moco(q, k, queue, 0.2), ref_info_nce(q, k, negs, 0.2),
                               rtol=1e-5)


def test_clip_and_siglip_match_numpy():
    x, y = _norm(_randn(8, B, D)).astype(np.float32), _norm(_randn(9, B, D)).astype(np.float32)
    np.testing.assert_allclose(losses.clip(x, y, 7.0), ref_clip(x, y, 7.0), rtol=1e-5)
    np.testing.assert_allclose(losses.siglip(x, y, 10.0, -10.0), ref_siglip(x, y, 10.0, -10.0),
                               rtol=1e-5)


def test_byol_is_two_minus_two_cosine():
    p, z = _randn(10, B, D), _randn(11, B, D)
    expected = np.mean(2 - 2 * np.sum(_norm(p) * _norm(z), -1))
    np.testing.assert_allclose(losses.byol(p, z), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.byol(p, 3.0 * p), 0.0, atol=1e-6)


def test_dino_matches_numpy_and_skips_same_view_pairs():
    students = [_randn(20 + v, B, K) for v in range(4)]  # 2 global + 2 local
    teachers = [_randn(30 + g, B, K) for g in range(2)]
    center = _randn(40, K)
    got = losses.dino(students, teachers, center, 0.1, 0.04)
    np.testing.assert_allclose(got, ref_dino(students, teachers, center, 0.1, 0.04), rtol=1e-5)


# --------------------------------------------------------- 1 vs N devices
def _cases():
    z1, z2 = _randn(60, B, D), _randn(61, B, D)
    x, y = _norm(z1).astype(np.float32), _norm(z2).astype(np.float32)
    return {
        "nt_xent": (losses.nt_xent, (z1, z2), (0, 1), dict(temperature=0.1)),
        "info_nce": (losses.info_nce, (z1, z2, _randn(62, B, 5, D)), (0, 1, 2),
                     dict(temperature=0.07)),
        "moco": (losses.moco, (z1, z2, _randn(63, K, D)), (0, 1), dict(temperature=0.2)),
        "clip": (losses.clip, (x, y, jnp.float32(5.0)), (0, 1), {}),
        "siglip": (losses.siglip, (x, y, jnp.float32(10.0), jnp.float32(-3.0)), (0, 1), {}),
        "byol": (losses.byol, (z1, z2), (0, 1), {}),
        "dino": (losses.dino, ([_randn(64 + v, B, K) for v in range(3)],
                               [_randn(70 + g, B, K) for g in range(2)], _randn(72, K)),
                 (0, 1), dict(student_temp=0.1, teacher_temp=0.04)),
    }


@pytest.mark.parametrize("n_devices", [2, 4, 8])
@pytest.mark.parametrize("name", ["nt_xent", "info_nce", "moco", "clip", "siglip", "byol",
                                  "dino"])
def test_value_and_grad_equal_on_1_and_n_devices(name, n_devices):
    fn, args, batch_argnums, kw = _cases()[name]
    _, grads = assert_sharded_equal(fn, args, batch_argnums=batch_argnums, n_devices=n_devices,
                                    **kw)
    # The test is only meaningful if the online-side gradient is not trivially zero.
    assert np.abs(np.asarray(jax.tree_util.tree_leaves(grads[0])[0])).max() > 1e-4


@pytest.mark.parametrize("name", ["nt_xent", "clip", "siglip"])
def test_tuple_of_mesh_axes(name):
    fn, args, batch_argnums, kw = _cases()[name]
    assert_sharded_equal(fn, args, batch_argnums=batch_argnums, mesh_shape=(2, 4),
                         axis_name=("replica", "data"), **kw)


def _shard_state_update(fn, state, batch, n_devices, **kw):
    mesh = make_mesh((n_devices,), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    f = jax.shard_map(lambda s, b: fn(s, b, axis_name="data", **kw), mesh=mesh,
                      in_specs=(P(), P("data")), out_specs=P())
    return jax.jit(f)(state, batch)


@pytest.mark.parametrize("n_devices", [2, 8])
def test_moco_queue_holds_last_keys_in_global_order(n_devices):
    queue = _norm(_randn(80, 40, D)).astype(np.float32)
    k = _randn(81, B, D)
    got = _shard_state_update(losses.moco_update_queue, queue, k, n_devices)
    expected = np.concatenate([_norm(k), queue[: 40 - B]])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got, losses.moco_update_queue(queue, k))


@pytest.mark.parametrize("n_devices", [2, 8])
def test_dino_center_is_mean_over_all_devices(n_devices):
    center = _randn(90, K)
    teachers = [_randn(91 + g, B, K) for g in range(2)]
    got = _shard_state_update(losses.dino_update_center, center, teachers, n_devices,
                              momentum=0.9)
    expected = 0.9 * center + 0.1 * np.mean(np.concatenate(teachers), axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------- stop gradient
def test_no_gradient_reaches_keys_queue_targets_or_teacher():
    q, k, queue = _randn(100, B, D), _randn(101, B, D), _randn(102, K, D)
    gk, gq = jax.grad(losses.moco, argnums=(1, 2))(q, k, queue)
    assert not np.any(gk) and not np.any(gq)
    assert not np.any(jax.grad(losses.byol, argnums=1)(q, k))
    s, t, c = [_randn(103, B, K), _randn(104, B, K)], [_randn(105, B, K)], _randn(106, K)
    gt, gc = jax.grad(losses.dino, argnums=(1, 2))(s, t, c)
    assert not np.any(gt[0]) and not np.any(gc)


def test_bfloat16_inputs_score_in_float32():
    z1, z2 = _randn(110, B, D), _randn(111, B, D)
    lo = losses.nt_xent(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, losses.nt_xent(z1, z2), rtol=2e-2)
    x = jnp.asarray(_norm(z1), jnp.bfloat16)
    assert losses.clip(x, x, 10.0).dtype == jnp.float32


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, match", [
    (lambda: losses.nt_xent(np.ones((4, 3)), np.ones((4, 5))), "z1 and z2"),
    (lambda: losses.nt_xent(np.ones((4, 3)), np.ones((4, 3)), temperature=0.0), "temperature"),
    (lambda: losses.nt_xent(np.ones((4,)), np.ones((4,))), "z1 must have 2 dims"),
    (lambda: losses.info_nce(np.ones((4, 3)), np.ones((4, 3)), np.ones((5, 2, 3))), "negatives"),
    (lambda: losses.moco(np.ones((4, 3)), np.ones((4, 3)), np.ones((8, 2))), "queue"),
    (lambda: losses.moco_update_queue(np.ones((3, 2)), np.ones((4, 2))), "queue_size"),
    (lambda: losses.clip(np.ones((4, 3)), np.ones((3, 3)), 1.0), "image_emb and text_emb"),
    (lambda: losses.clip(np.ones((4, 3)), np.ones((4, 3)), np.ones(4)), "logit_scale"),
    (lambda: losses.siglip(np.ones((4, 3)), np.ones((4, 3)), 1.0, np.ones(2)), "logit_bias"),
    (lambda: losses.byol(np.ones((4, 3)), np.ones((4, 3, 1))), "prediction"),
    (lambda: losses.dino([np.ones((4, 5))] * 2, [np.ones((4, 5))], np.ones(6)), "center"),
    (lambda: losses.dino([np.ones((4, 5))] * 2, [np.ones((4, 5))], np.ones(5), 0.1, -1.0),
     "teacher_temp"),
    (lambda: losses.dino([np.ones((4, 5))], [np.ones((4, 5))] * 2, np.ones(5)), "student views"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_batch_not_divisible_by_devices_is_refused():
    mesh = make_mesh((8,), ("data",))
    f = losses.shard_loss(losses.nt_xent, mesh, batch_argnums=(0, 1))
    with pytest.raises(ValueError, match=r"z1 has global batch 12 .* multiple of 8"):
        f(np.ones((12, 4), np.float32), np.ones((12, 4), np.float32))
    with pytest.raises(ValueError, match="axis_name 'model' is not an axis"):
        losses.shard_loss(losses.nt_xent, mesh, batch_argnums=(0, 1), axis_name="model")
