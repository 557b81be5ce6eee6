"""jssl.models.norm.GroupNorm and BatchNorm: flax.linen's params and results, float64
references, and BatchNorm's synchronised statistics on 1 and 8 devices."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.models import norm as norm_lib
from jssl.models.norm import BatchNorm, GroupNorm, row_fold

CASES = [  # (shape, num_groups, group_size)
    ((4, 8, 8, 16), 4, None),
    ((3, 5, 7, 12), None, 3),
    ((2, 10, 6), 6, None),
    ((5, 8), 2, None),
    ((2, 4, 4, 8), 1, None),
]


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    # non-zero means and unequal scales per channel, as after a convolution
    c = shape[-1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, c) + rng.uniform(-2, 2, c)
    return x.astype(np.float32)


def _params(shape, seed=1):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
                       "bias": jnp.asarray(rng.standard_normal(c), jnp.float32)}}


def _reference(x, scale, bias, groups, eps):
    """float64 NumPy group norm over all axes but the first and the last."""
    x = x.astype(np.float64)
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * scale + bias


@pytest.mark.parametrize("shape,num_groups,group_size", CASES)
def test_matches_flax_and_float64(shape, num_groups, group_size):
    x = jnp.asarray(_inputs(shape))
    kw = dict(num_groups=num_groups, group_size=group_size, epsilon=1e-5)
    ours, theirs = GroupNorm(**kw), nn.GroupNorm(**kw)
    init_ours = ours.init(jax.random.key(0), x)
    init_theirs = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, init_ours) == jax.tree.map(jnp.shape, init_theirs)
    np.testing.assert_array_equal(init_ours["params"]["scale"], init_theirs["params"]["scale"])
    variables = _params(shape)
    y, y_flax = ours.apply(variables, x), theirs.apply(variables, x)
    assert y.shape == x.shape and y.dtype == y_flax.dtype == jnp.float32
    groups = num_groups or shape[-1] // group_size
    ref = _reference(np.asarray(x), np.asarray(variables["params"]["scale"], np.float64),
                     np.asarray(variables["params"]["bias"], np.float64), groups, 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_flax), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,num_groups,group_size", CASES[:3])
def test_gradients_match_flax(shape, num_groups, group_size):
    x = jnp.asarray(_inputs(shape))
    t = jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32)
    kw = dict(num_groups=num_groups, group_size=group_size, epsilon=1e-5)
    variables = _params(shape)

    def grads(module):
        return jax.grad(lambda v, x: jnp.vdot(module.apply(v, x), t), argnums=(0, 1))(
            variables, x)

    (dv, dx), (dv_flax, dx_flax) = grads(GroupNorm(**kw)), grads(nn.GroupNorm(**kw))
    scale = float(jnp.abs(dx_flax).max())
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_flax), atol=1e-4 * scale)
    for name in ("scale", "bias"):
        a, b = dv["params"][name], dv_flax["params"][name]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                   atol=1e-4 * float(jnp.abs(b).max()))


def test_normalised_output_statistics():
    """With unit scale and zero bias each (example, group) has mean 0 and variance ~1."""
    x = jnp.asarray(_inputs((3, 6, 6, 8)))
    y = GroupNorm(num_groups=2, epsilon=1e-6).apply(
        GroupNorm(num_groups=2).init(jax.random.key(0), x), x)
    yg = np.asarray(y).reshape(3, -1, 2, 4)
    np.testing.assert_allclose(yg.mean(axis=(1, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(yg.var(axis=(1, 3)), 1.0, atol=1e-4)


def test_dtype_rules_follow_flax():
    x = jnp.asarray(_inputs((2, 4, 4, 8)), jnp.bfloat16)
    for kw in (dict(), dict(dtype=jnp.float32), dict(param_dtype=jnp.bfloat16)):
        ours = GroupNorm(num_groups=4, **kw)
        theirs = nn.GroupNorm(num_groups=4, **kw)
        v = theirs.init(jax.random.key(0), x)
        assert ours.apply(v, x).dtype == theirs.apply(v, x).dtype, kw
    no_affine = GroupNorm(num_groups=4, use_bias=False, use_scale=False)
    assert no_affine.init(jax.random.key(0), x) == {}


@pytest.mark.parametrize("kw,match", [
    (dict(num_groups=3), "num_groups=3 does not divide 8 channels"),
    (dict(num_groups=None, group_size=3), "group_size=3 does not divide 8 channels"),
    (dict(num_groups=2, group_size=4), "give exactly one"),
])
def test_bad_groups_raise(kw, match):
    x = jnp.zeros((2, 4, 4, 8))
    with pytest.raises(ValueError, match=match):
        GroupNorm(**kw).init(jax.random.key(0), x)


# ------------------------------------------------------------------------------ BatchNorm
BN_CASES = [  # shapes: wide rows (k = 8, 16, 2), odd position counts (k = 1), C >= 128
    (4, 8, 8, 16), (64, 7, 7, 8), (6, 3, 3, 32), (3, 5, 7, 12), (5, 8), (16, 128), (2, 3, 200)]


def _bn_reference(x, scale, bias, eps):
    """float64 NumPy training-mode batch norm over all axes but the last: y and (μ, σ²)."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    mean, var = x.mean(0), x.var(0)
    return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


@pytest.mark.parametrize("shape", BN_CASES)
def test_batch_norm_matches_flax_and_float64(shape):
    x = jnp.asarray(_inputs(shape))
    kw = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
    ours, theirs = BatchNorm(**kw), nn.BatchNorm(**kw)
    init = ours.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x))
    variables = {**_params(shape), "batch_stats": {
        "mean": jnp.full(shape[-1], 0.5, jnp.float32), "var": jnp.full(shape[-1], 2.0)}}
    (y, upd), (y_flax, upd_flax) = (m.apply(variables, x, mutable=["batch_stats"])
                                    for m in (ours, theirs))
    ref, mean, var = _bn_reference(np.asarray(x), np.asarray(variables["params"]["scale"]),
                                   np.asarray(variables["params"]["bias"]), 1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(ref.shape), ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_flax), atol=2e-5, rtol=1e-5)
    stats = upd["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.9 * 0.5 + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 * 2.0 + 0.1 * var, rtol=1e-5, atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_allclose(stats[name], upd_flax["batch_stats"][name], rtol=1e-5)
    # evaluation: the running averages, no update
    evaluated = BatchNorm(use_running_average=True).apply(variables, x)
    want = ((np.asarray(x) - 0.5) / np.sqrt(2.0 + 1e-5) * np.asarray(variables["params"]["scale"])
            + np.asarray(variables["params"]["bias"]))
    np.testing.assert_allclose(np.asarray(evaluated), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", BN_CASES[:4])
def test_batch_norm_gradients_match_flax(shape):
    x = jnp.asarray(_inputs(shape))
    t = jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32)
    variables = {**_params(shape), "batch_stats": {"mean": jnp.zeros(shape[-1]),
                                                   "var": jnp.ones(shape[-1])}}

    def grads(module):
        def f(params, x):
            y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.vdot(y, t)
        return jax.jit(jax.grad(f, argnums=(0, 1)))(variables["params"], x)

    kw = dict(use_running_average=False)
    (dp, dx), (dp_flax, dx_flax) = grads(BatchNorm(**kw)), grads(nn.BatchNorm(**kw))
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_flax),
                               atol=2e-4 * float(jnp.abs(dx_flax).max()))
    for name in ("scale", "bias"):
        np.testing.assert_allclose(np.asarray(dp[name]), np.asarray(dp_flax[name]),
                                   atol=2e-4 * float(jnp.abs(dp_flax[name]).max()))


def test_batch_norm_sums_over_wide_rows_on_cpu():
    """k = the largest power of two with k·C <= 128 dividing the position count; the jaxpr
    of the training-mode layer reduces a [M/k, k·C] view."""
    assert row_fold(512 * 28 * 28, 8) == 16
    assert row_fold(512 * 14 * 14, 16) == 8
    assert row_fold(6 * 3 * 3, 32) == 2
    assert row_fold(105, 12) == 1 and row_fold(16, 128) == 1 and row_fold(64, 200) == 1
    x = jnp.zeros((8, 4, 4, 16))
    module = BatchNorm(use_running_average=False)
    v = module.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(lambda x: module.apply(v, x, mutable=["batch_stats"]))(x))
    assert "f32[16,128]" in jaxpr
    old = norm_lib.WIDE_ROWS
    norm_lib.WIDE_ROWS = False
    try:
        assert row_fold(512 * 28 * 28, 8) == 1
        jaxpr = str(jax.make_jaxpr(lambda x: module.apply(v, x, mutable=["batch_stats"]))(x))
        assert "f32[16,128]" not in jaxpr
    finally:
        norm_lib.WIDE_ROWS = old


def test_sync_batch_norm_1_vs_8_devices():
    """With axis_name inside shard_map over 8 devices: outputs, running averages and the
    parameter gradients (of the replicated params: summed over the devices by shard_map)
    equal BatchNorm on the global batch."""
    x = jnp.asarray(_inputs((16, 4, 4, 8)))
    t = jnp.asarray(np.random.default_rng(3).standard_normal(x.shape), jnp.float32)
    variables = {**_params(x.shape), "batch_stats": {"mean": jnp.zeros(8), "var": jnp.ones(8)}}

    def step(module, params, stats, x, t):
        def f(p):
            y, upd = module.apply({"params": p, "batch_stats": stats}, x,
                                  mutable=["batch_stats"])
            return jnp.vdot(y, t), (y, upd["batch_stats"])
        return jax.grad(f, has_aux=True)(params)

    want_g, (want_y, want_s) = jax.jit(functools.partial(
        step, BatchNorm(use_running_average=False)))(variables["params"],
                                                      variables["batch_stats"], x, t)
    mesh = jax.make_mesh((8,), ("data",))

    def local(p, s, xs, ts):
        g, (y, stats) = step(BatchNorm(use_running_average=False, axis_name="data"), p, s,
                             xs, ts)
        return g, y, stats  # g: replicated params, so shard_map's transpose has summed it

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                              out_specs=(P(), P("data"), P())))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    g, y, s = f(jax.device_put(variables["params"], rep),
                jax.device_put(variables["batch_stats"], rep), jax.device_put(x, rows),
                jax.device_put(t, rows))
    np.testing.assert_allclose(np.asarray(y), np.asarray(want_y), rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(np.asarray(s[name]), np.asarray(want_s[name]), rtol=1e-5,
                                   atol=1e-6)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(np.asarray(g[name]), np.asarray(want_g[name]), rtol=1e-4,
                                   atol=1e-4 * float(jnp.abs(want_g[name]).max()))


def test_batch_norm_dtype_rules_follow_flax():
    x = jnp.asarray(_inputs((2, 4, 4, 8)), jnp.bfloat16)
    for kw in (dict(), dict(dtype=jnp.float32), dict(param_dtype=jnp.bfloat16)):
        ours = BatchNorm(use_running_average=False, **kw)
        theirs = nn.BatchNorm(use_running_average=False, **kw)
        v = theirs.init(jax.random.key(0), x)
        assert (ours.apply(v, x, mutable=["batch_stats"])[0].dtype
                == theirs.apply(v, x, mutable=["batch_stats"])[0].dtype), kw
    with pytest.raises(ValueError, match=r"BatchNorm input of shape \(8,\)"):
        BatchNorm(use_running_average=False).init(jax.random.key(0), jnp.zeros(8))


def test_resnet_batch_norm_switch():
    """The ResNets use jssl's BatchNorm on CPU by default (None), nn.BatchNorm when False:
    the wide-row statistics of the 8-channel stem show in the jaxpr or not."""
    from jssl.models import resnet as resnet_lib

    x = jnp.zeros((2, 8, 8, 1))
    old = resnet_lib.JSSL_BATCHNORM
    try:
        seen = {}
        for value in (None, True, False):
            resnet_lib.JSSL_BATCHNORM = value
            model = resnet_lib.resnet("tiny", stem="cifar")
            v = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x, train=True))
            jaxpr = str(jax.make_jaxpr(lambda v, m=model: m.apply(
                v, x, train=True, mutable=["batch_stats"]))(v))
            seen[value] = "f32[8,128]" in jaxpr  # [2·8·8/16, 16·8]
        assert seen == {None: True, True: True, False: False}
    finally:
        resnet_lib.JSSL_BATCHNORM = old
