"""jssl.models.norm.GroupNorm: flax.linen.GroupNorm's params and results, a float64 reference."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models.norm import GroupNorm

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
