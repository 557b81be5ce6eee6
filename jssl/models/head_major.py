"""``flax.linen.dot_product_attention`` (and the text transformers' attention products)
computed head-major, for XLA:CPU.

Flax's attention contracts ``[B, L, H, D]`` queries and keys with
``einsum('...qhd,...khd->...hqk')``, whose batch axes (B, H) are not leading in the
operands. XLA:CPU (jaxlib 0.10) runs that forward about half as fast as the same products
on operands transposed to ``[B, H, L, D]`` first:

    q̃, k̃, ṽ = transpose(q, k, v → [B, H, L, D]),   q̃ ← q̃ / √D
    A = softmax(q̃·k̃ᵀ + bias, masked to finfo.min where ``mask`` is False)   [B, H, Lq, Lk]
    out = transpose(A·ṽ → [B, Lq, H, D])

the same operations in the same order as Flax's (the division of the query, the mask
value, the float32 softmax when ``force_fp32_for_softmax``), so values and gradients agree
to float32 rounding (``tests/test_models_vit.py``). Forward alone (jitted, one attention at
the CPU presets' shapes, exploratory): 0.41-0.57 of Flax's time; in a differentiated
update the two take the same time. Attention dropout and ``module`` (sowing the weights)
are left to Flax's function, which this calls for them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

#: head-major attention in jssl's ViT (``attention="xla"``) and text transformers: True,
#: False (the einsum forms), or None: on CPU only. Read at trace time; also a benchmark's A/B
#: switch (bench/head_major.py).
ENABLED: bool | None = None


def enabled() -> bool:
    """Whether :data:`ENABLED` (None: the CPU backend) asks for head-major attention."""
    return jax.default_backend() == "cpu" if ENABLED is None else bool(ENABLED)


def attention_fn() -> Any:
    """The ``nn.dot_product_attention`` drop-in :data:`ENABLED` asks for:
    :func:`head_major_attention`, or Flax's own function."""
    return head_major_attention if enabled() else nn.dot_product_attention


def _logits(q: jax.Array, k: jax.Array, **kwargs: Any) -> jax.Array:
    """q·kᵀ per (b, h) on ``[B, L, H, D]`` operands, as a matmul over leading axes."""
    return jnp.matmul(jnp.swapaxes(q, 1, 2), jnp.transpose(k, (0, 2, 3, 1)), **kwargs)


def _weighted(probs: jax.Array, v: jax.Array, **kwargs: Any) -> jax.Array:
    """probs ``[B, H, Lq, Lk]`` · v ``[B, Lk, H, D]`` -> ``[B, Lq, H, D]``, as a matmul."""
    return jnp.swapaxes(jnp.matmul(probs, jnp.swapaxes(v, 1, 2), **kwargs), 1, 2)


def attention_logits(q: jax.Array, k: jax.Array, **kwargs: Any) -> jax.Array:
    """``einsum('bqhd,bkhd->bhqk', q, k, **kwargs)``, head-major when :func:`enabled`."""
    if not enabled():
        return jnp.einsum("bqhd,bkhd->bhqk", q, k, **kwargs)
    return _logits(q, k, **kwargs)


def attend(probs: jax.Array, v: jax.Array) -> jax.Array:
    """``einsum('bhqk,bkhd->bqhd', probs, v)``, head-major when :func:`enabled`."""
    if not enabled():
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return _weighted(probs, v)


def head_major_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                         bias: jax.Array | None = None, mask: jax.Array | None = None,
                         broadcast_dropout: bool = True, dropout_rng: Any = None,
                         dropout_rate: float = 0.0, deterministic: bool = False,
                         dtype: Any = None, precision: Any = None, module: Any = None,
                         force_fp32_for_softmax: bool = False) -> jax.Array:
    """Drop-in for ``nn.dot_product_attention`` (same arguments, ``[B, L, H, D]`` in and out);
    see the module docstring."""
    if (module is not None or (dropout_rate > 0.0 and not deterministic)
            or query.ndim != 4):
        return nn.dot_product_attention(
            query, key, value, bias=bias, mask=mask, broadcast_dropout=broadcast_dropout,
            dropout_rng=dropout_rng, dropout_rate=dropout_rate, deterministic=deterministic,
            dtype=dtype, precision=precision, module=module,
            force_fp32_for_softmax=force_fp32_for_softmax)
    query, key, value = nn.dtypes.promote_dtype(query, key, value, dtype=dtype)
    dtype = query.dtype
    query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
    logits = _logits(query, key, precision=precision)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
    if force_fp32_for_softmax and dtype != jnp.float32:
        weights = jax.nn.softmax(logits.astype(jnp.float32))
    else:
        weights = jax.nn.softmax(logits).astype(dtype)
    return _weighted(weights, value, precision=precision)
