"""Softmax attention by one fused native kernel on XLA:CPU (``jssl/native/attention.cc``).

XLA:CPU runs attention as separate batched matmuls, softmax reductions and elementwise passes
over ``[B, H, L, L]`` tensors, and its backward stores and re-reads them. The native kernel
(called through ``jax.ffi``) does, per (batch, head) and a few query rows at a time, on the
``[B, L, H, D]`` projections as they are laid out,

    forward:   S = q̃·kᵀ,  P = softmax(S),  O = P·v,  lse = m + log Σ_j exp(S_j − m)   (q̃ = q/√D)
    backward:  P = exp(S − lse),  δ = rowsum(dO ⊙ O),  dS = P ⊙ (dO·vᵀ − δ),
               dq̃ = dS·k,  dk = dSᵀ·q̃,  dv = Pᵀ·dO

so the scores never leave a few rows of L floats, and the backward recomputes them from the
saved log-sum-exp (as flash attention does). The query is divided by √D in JAX before the
kernel, as Flax does; the softmax is float32, computed with max subtraction; values and
gradients match Flax's to float32 rounding (``tests/test_models_native_attention.py``).

Used when :func:`enabled` and :func:`supports` say so: the CPU backend with one device (under
a multi-device ``jit`` the partitioner would replicate a custom call), float32, self-attention
(q, k, v of one shape), head dim 16, 32, 64 or 128, and no mask, bias or attention dropout;
everything else goes to :func:`jssl.models.head_major.head_major_attention` (or Flax's
function where that is off). The kernel is
built on first use (:mod:`jssl.native`); without a C++ compiler it is off.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import native
from jssl.models import head_major

#: the native kernel for attention on CPU: True (raise if it cannot be built), False (off),
#: or None: on when the backend is CPU with one device and the kernel builds. Read at trace
#: time; also a benchmark's A/B switch (bench/native_attention.py).
ENABLED: bool | None = None
HEAD_DIMS = (16, 32, 64, 128)
_FORWARD, _BACKWARD = "jssl_attention_forward", "jssl_attention_backward"


@functools.cache
def _registered() -> bool:
    """Builds and loads the kernel and registers its two FFI targets; False if it can't."""
    lib = native.load("attention")
    if lib is None:
        return False
    jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(lib.JsslAttentionForward),
                                platform="cpu")
    jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(lib.JsslAttentionBackward),
                                platform="cpu")
    return True


def enabled() -> bool:
    """Whether :data:`ENABLED` asks for the native kernel (None: CPU, one device, built)."""
    if ENABLED is None:
        return (jax.default_backend() == "cpu" and jax.device_count() == 1
                and _registered())
    if ENABLED and not _registered():
        raise RuntimeError("jssl.models.native_attention.ENABLED=True but the native kernel "
                           "could not be built (see the warning above); install a C++ "
                           "compiler or set ENABLED=None to fall back to XLA's attention")
    return bool(ENABLED)


def supports(query: jax.Array, key: jax.Array, value: jax.Array) -> bool:
    """Whether the kernel takes these operands: ``[B, L, H, D]`` float32 of one shape, D in
    :data:`HEAD_DIMS`."""
    return (query.ndim == 4 and query.shape == key.shape == value.shape
            and query.dtype == key.dtype == value.dtype == jnp.float32
            and query.shape[-1] in HEAD_DIMS)


def _forward_call(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    b, length, heads, _ = q.shape
    out = (jax.ShapeDtypeStruct(q.shape, q.dtype),
           jax.ShapeDtypeStruct((b, heads, length), jnp.float32))
    return jax.ffi.ffi_call(_FORWARD, out, vmap_method="sequential")(q, k, v)


@jax.custom_vjp
def _attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q·kᵀ)·v per (batch, head) on ``[B, L, H, D]``; q already scaled."""
    return _forward_call(q, k, v)[0]


def _attention_fwd(q, k, v):
    o, lse = _forward_call(q, k, v)
    return o, (q, k, v, o, lse)


def _attention_bwd(res, do):
    q, k, v, o, lse = res
    grads = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    return tuple(jax.ffi.ffi_call(_BACKWARD, grads, vmap_method="sequential")(
        q, k, v, o, lse, do))


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """``softmax(q·kᵀ/√D)·v`` per head on ``[B, L, H, D]`` by the native kernel (the caller
    checks :func:`enabled` and :func:`supports`)."""
    if not supports(query, key, value):
        raise ValueError(f"native attention takes [B, L, H, D] float32 q, k, v of one shape "
                         f"with D in {HEAD_DIMS}; got query {query.shape} {query.dtype}, key "
                         f"{key.shape}, value {value.shape}: use head_major_attention")
    _registered()
    return _attention(query / jnp.sqrt(query.shape[-1]).astype(query.dtype), key, value)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          bias: jax.Array | None = None, mask: jax.Array | None = None,
                          broadcast_dropout: bool = True, dropout_rng: Any = None,
                          dropout_rate: float = 0.0, deterministic: bool = False,
                          dtype: Any = None, precision: Any = None, module: Any = None,
                          force_fp32_for_softmax: bool = False) -> jax.Array:
    """Drop-in for ``nn.dot_product_attention``: the native kernel when it applies (see the
    module docstring), else the head-major or Flax function with the same arguments."""
    if (bias is None and mask is None and module is None and precision is None
            and (dropout_rate == 0.0 or deterministic)
            and (dtype is None or jnp.dtype(dtype) == jnp.float32)
            and supports(query, key, value) and enabled()):
        return attention(query, key, value)
    fallback = (head_major.head_major_attention if head_major.enabled()
                else nn.dot_product_attention)
    return fallback(
        query, key, value, bias=bias, mask=mask, broadcast_dropout=broadcast_dropout,
        dropout_rng=dropout_rng, dropout_rate=dropout_rate, deterministic=deterministic,
        dtype=dtype, precision=precision, module=module,
        force_fp32_for_softmax=force_fp32_for_softmax)
