"""Dropout whose mask is Flax's, bit for bit, drawn without XLA:CPU's rolled Threefry loop.

    y = select(m, x / (1 − rate), 0),   m = uniform(key, shape) < 1 − rate

``flax.linen.Dropout`` draws ``m`` with ``jax.random.bernoulli``. With JAX's default
Threefry-2x32 key and ``jax_threefry_partitionable`` (the default), element i of the uniform
comes from one Threefry-2x32 block of the counter (hi, lo) = (0, i), i the row-major index:
``bits = x0 ^ x1`` of the 20-round block, ``u = float(1 + (bits >> 9)·2⁻²³) − 1``. On CPU
JAX lowers the block as a ``while`` loop of five 4-round iterations (to keep compile times
short), so XLA writes and re-reads two u32 arrays of the mask's size in every iteration and
keeps them alive until the backward. :func:`keep_mask` writes the same block out unrolled in
``jax.numpy``; XLA fuses the counters, the 20 rounds and the comparison into one loop over
the output. Same bits (tested against ``jax.random.bernoulli`` and ``nn.Dropout``), 4-8×
faster on a 2-core Xeon (``bench/text_ops.py``, docs/performance.md).

Other key implementations (``rbg``, ``unsafe_rbg``), the non-partitionable Threefry, keep
probabilities that are not float32 and masks of 2³² elements or more go through
``jax.random.bernoulli`` unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: Threefry-2x32 rotation constants, alternating every 4 rounds (Salmon et al., 2011)
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array,
                 x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The 20-round Threefry-2x32 block of counters (x0, x1) under key (k0, k1), unrolled.

    Five groups of four rounds ``x0 += x1; x1 = rotl(x1, r) ^ x0``, each followed by the key
    injection ``x0 += ks[g+1]; x1 += ks[g+2] + g + 1`` with ks = (k0, k1, k0 ^ k1 ^ C).
    """
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for g in range(5):
        for r in _ROTATIONS[g % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(g + 1) % 3]
        x1 = x1 + ks[(g + 2) % 3] + np.uint32(g + 1)
    return x0, x1


def _unrolled_applies(key: jax.Array, keep_prob: object, shape: Sequence[int]) -> bool:
    if not jax.config.jax_threefry_partitionable or int(np.prod(shape)) >= 2 ** 32:
        return False
    if jnp.result_type(keep_prob) != jnp.float32:
        return False
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape == () and str(jax.random.key_impl(key)) == "threefry2x32"
    return key.shape == (2,) and jax.config.jax_default_prng_impl == "threefry2x32"


def keep_mask(key: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
    """``jax.random.bernoulli(key, keep_prob, shape)``, the same booleans, Threefry unrolled."""
    shape = tuple(int(d) for d in shape)
    if not _unrolled_applies(key, keep_prob, shape):
        return jax.random.bernoulli(key, keep_prob, shape)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):  # the row-major flat index, as JAX counts it
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    x0, x1 = threefry2x32(key[0], key[1], jnp.zeros(shape, jnp.uint32), index)
    mantissa = ((x0 ^ x1) >> np.uint32(9)) | np.uint32(0x3F800000)
    uniform = jnp.maximum(0.0, lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0)
    return uniform < jnp.float32(keep_prob)


class Dropout(nn.Dropout):
    """``flax.linen.Dropout`` (same fields, same RNG stream, same outputs) with :func:`keep_mask`.

    Named ``Dropout`` so that Flax's automatic names (``Dropout_0``), hence the keys that
    ``make_rng`` folds from them, are the ones ``nn.Dropout`` gets.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        keep = self.keep(inputs.shape, deterministic, rng)
        if keep is None:
            return inputs
        if self.rate == 1.0:  # no division by zero in the gradient
            return jnp.zeros_like(inputs)
        return lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))

    def keep(self, shape: Sequence[int], deterministic: bool | None = None,
             rng: jax.Array | None = None) -> jax.Array | None:
        """The boolean keep mask, broadcast to ``shape``, that ``__call__`` draws for inputs
        of that shape (the same RNG key, so the same bits); None when nothing is dropped (rate
        0 or deterministic). For kernels that apply the dropout themselves
        (``jssl.models.native_attention``)."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return None
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        dims = {d % len(shape) for d in self.broadcast_dims}
        drawn = [1 if d in dims else n for d, n in enumerate(shape)]
        return jnp.broadcast_to(keep_mask(rng, 1.0 - self.rate, drawn), tuple(shape))
