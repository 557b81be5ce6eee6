"""The exact GELU in erf form (jssl.models.activations) against float64 and jax.nn.gelu, and
the transformer MLPs that use it."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from jssl.models.activations import gelu
from jssl.models.transformer import BlockConfig, Mlp
from jssl.models.vit import Mlp as VitMlp


def _primitives(fn, *args) -> set[str]:
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.add(eqn.primitive.name)
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_gelu_matches_the_float64_formula_and_jax_exact_gelu():
    x = np.linspace(-10, 10, 40001).astype(np.float32)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = np.asarray(jax.jit(gelu)(x), np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(x, approximate=False)), rtol=2e-6,
                               atol=2e-6)
    # gelu'(x) = Φ(x) + x φ(x)
    dwant = np.array([0.5 * (1 + math.erf(v / math.sqrt(2)))
                      + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                      for v in x.astype(np.float64)])
    dgot = np.asarray(jax.jit(jax.vmap(jax.grad(gelu)))(x), np.float64)
    np.testing.assert_allclose(dgot, dwant, rtol=1e-5, atol=2e-6)
    assert float(gelu(jnp.float32(0.0))) == 0.0 and float(gelu(jnp.float32(30.0))) == 30.0


def test_gelu_keeps_the_dtype():
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.linspace(-3, 3, 7, dtype=dtype)
        y = gelu(x)
        assert y.dtype == dtype
        np.testing.assert_allclose(np.asarray(y, np.float32),
                                   np.asarray(jax.nn.gelu(x.astype(jnp.float32),
                                                          approximate=False)), atol=2e-2)


def test_transformer_mlps_use_the_erf_gelu():
    x = jnp.ones((2, 3, 8))
    cfg = BlockConfig(dim=8, num_heads=2, mlp_dim=16, activation="gelu")
    mlp = Mlp(cfg)
    params = mlp.init(jax.random.key(0), x, deterministic=True)
    prims = _primitives(lambda p: mlp.apply(p, x, deterministic=True), params)
    assert "erf" in prims and "erfc" not in prims
    vit_mlp = VitMlp(hidden_dim=16)
    params = vit_mlp.init(jax.random.key(0), x, deterministic=True)
    prims = _primitives(lambda p: vit_mlp.apply(p, x, deterministic=True), params)
    assert "erf" in prims and "erfc" not in prims
