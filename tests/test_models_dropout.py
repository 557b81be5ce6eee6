"""jssl's Dropout (jssl.models.dropout): the unrolled Threefry-2x32 against the reference
implementation's known answers, its masks against jax.random.bernoulli and nn.Dropout bit for
bit (values and gradients), the fallbacks, and the mask under an 8-device sharding."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.models.dropout import Dropout, keep_mask, threefry2x32
from tests.test_models_activations import _primitives

# Random123's known-answer vectors for threefry2x32_20 (key, counter) -> output, as in JAX's
# own random tests
KNOWN = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
         ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
         ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]


@pytest.mark.parametrize("key,counter,want", KNOWN)
def test_threefry_block_gives_the_reference_known_answers(key, counter, want):
    u = [jnp.uint32(v) for v in (*key, *counter)]
    got = jax.jit(threefry2x32)(*u)
    assert tuple(int(v) for v in got) == want


@pytest.mark.parametrize("shape", [(7,), (64, 64, 128), (3, 4, 5, 6), (1, 1)])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.13])
def test_keep_mask_equals_jax_bernoulli_bit_for_bit(shape, keep):
    for key in (jax.random.key(11), jax.random.PRNGKey(11)):
        want = jax.random.bernoulli(key, keep, shape)
        got = jax.jit(keep_mask, static_argnums=(1, 2))(key, keep, shape)
        assert got.shape == want.shape and got.dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # a statistical bound on its own: the kept fraction within 6 sigma of keep
    n = int(np.prod(shape))
    if n > 1000:
        assert abs(float(jnp.mean(got)) - keep) < 6 * np.sqrt(keep * (1 - keep) / n)


def test_keep_mask_lowers_without_the_rolled_threefry_loop():
    def lowered(fn, key):
        return jax.jit(lambda k: fn(k, 0.9, (8, 16))).lower(key).as_text()

    key = jax.random.key(0)
    assert "while" in lowered(jax.random.bernoulli, key)  # JAX's CPU lowering: a rolled loop
    assert "while" not in lowered(keep_mask, key)
    assert "random_bits" not in _primitives(lambda k: keep_mask(k, 0.9, (8, 16)), key)
    # the fallback (an rbg key) goes through jax.random.bernoulli's random_bits
    rbg = jax.random.key(0, impl="rbg")
    assert "random_bits" in _primitives(lambda k: keep_mask(k, 0.9, (8, 16)), rbg)


def test_fallbacks_equal_jax_bernoulli():
    shape = (5, 33)
    for key in (jax.random.key(3, impl="rbg"), jax.random.key(3, impl="unsafe_rbg")):
        np.testing.assert_array_equal(np.asarray(keep_mask(key, 0.8, shape)),
                                      np.asarray(jax.random.bernoulli(key, 0.8, shape)))
    with jax.threefry_partitionable(False):
        key = jax.random.key(3)
        np.testing.assert_array_equal(np.asarray(keep_mask(key, 0.8, shape)),
                                      np.asarray(jax.random.bernoulli(key, 0.8, shape)))


@pytest.mark.parametrize("rate,dims", [(0.1, ()), (0.5, (1,)), (0.37, (-1,)), (0.0, ()),
                                       (1.0, ())])
def test_module_equals_flax_dropout_values_and_gradients(rate, dims):
    x = jax.random.normal(jax.random.key(1), (4, 7, 33))
    w = jax.random.normal(jax.random.key(2), x.shape)

    def run(cls, x):
        y = cls(rate, broadcast_dims=dims).apply({}, x, deterministic=False,
                                                 rngs={"dropout": jax.random.key(5)})
        return jnp.sum(y * w), y

    (_, want), dwant = jax.jit(jax.value_and_grad(lambda x: run(nn.Dropout, x), has_aux=True))(x)
    (_, got), dgot = jax.jit(jax.value_and_grad(lambda x: run(Dropout, x), has_aux=True))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(dgot), np.asarray(dwant))
    if 0 < rate < 1:
        dropped = np.asarray(got) == 0
        assert 0 < dropped.mean() < 1
        np.testing.assert_allclose(np.asarray(got)[~dropped], np.asarray(x)[~dropped] / (1 - rate),
                                   rtol=1e-6)
    deterministic = Dropout(rate).apply({}, x, deterministic=True)
    np.testing.assert_array_equal(np.asarray(deterministic), np.asarray(x))


def test_mask_is_the_same_on_one_and_eight_devices():
    """Under jit with the batch sharded over 8 devices, the mask is the single device's."""
    x = jax.random.normal(jax.random.key(1), (16, 12, 24))
    fn = jax.jit(lambda x: Dropout(0.25).apply({}, x, deterministic=False,
                                               rngs={"dropout": jax.random.key(9)}))
    one = fn(x)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    eight = fn(sharded)
    assert len(eight.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(eight), np.asarray(one))
