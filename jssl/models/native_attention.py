"""Softmax attention by one fused native kernel on XLA:CPU (``jssl/native/attention.cc``).

XLA:CPU runs attention as separate batched matmuls, softmax reductions and elementwise passes
over ``[B, H, L, L]`` tensors, and its backward stores and re-reads them. The native kernel
(called through ``jax.ffi``) does, per (batch, head) and a few query rows at a time, on the
``[B, L, H, D]`` projections as they are laid out (q̃ = q/√D, or q as given; M the attention
mask, K a dropout keep mask with keep probability κ),

    forward:   S = where(M, q̃·kᵀ, min),  m = rowmax(S),  ι = 1/rowsum(exp(S − m)),
               P = exp(S − m)·ι,  P̃ = where(K, P/κ, 0),  O = P̃·v
    backward:  P from (m, ι),  dP = where(K, dO·vᵀ/κ, 0),  δ = rowsum(dO ⊙ O),
               dS = where(M, P ⊙ (dP − δ), 0),  dq̃ = dS·k,  dk = dSᵀ·q̃,  dv = P̃ᵀ·dO

so the scores never leave a few rows of L floats, and the backward recomputes them from the
saved row maxima and inverse sums (as flash attention does from its log-sum-exp; the two
keep a fully masked row, which Flax makes uniform, exact). ``min`` is ``finfo(float32).min``
and the query is divided by √D in JAX before the kernel, both as Flax does; the softmax is
float32; values and gradients match Flax's to float32 rounding
(``tests/test_models_native_attention.py``).

Used when :func:`enabled` and :func:`supports` say so: the CPU backend with one device (under
a multi-device ``jit`` the partitioner would replicate a custom call), float32, self-attention
(q, k, v of one shape), head dim 16, 32, 64 or 128, a mask broadcast over batch and heads or
none, no additive bias. jssl's ViT (``attention_fn("xla")``, through
:func:`dot_product_attention`) and text transformers (``jssl.models.transformer``, with their
attention dropout's keep mask from ``jssl.models.dropout.Dropout.keep``) call it; everything
else goes to :func:`jssl.models.head_major.head_major_attention` (or Flax's function where
that is off). The kernel is built on first use (:mod:`jssl.native`); without a C++ compiler
it is off.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def supports(query: jax.Array, key: jax.Array, value: jax.Array,
             mask: jax.Array | None = None) -> bool:
    """Whether the kernel takes these operands: ``[B, L, H, D]`` float32 of one shape, D in
    :data:`HEAD_DIMS`, and a mask (if any) of shape ``[1 | B, 1 | H, 1 | L, 1 | L]``."""
    if not (query.ndim == 4 and query.shape == key.shape == value.shape
            and query.dtype == key.dtype == value.dtype == jnp.float32
            and query.shape[-1] in HEAD_DIMS):
        return False
    b, length, h, _ = query.shape
    return mask is None or (mask.ndim == 4 and all(
        n in (1, full) for n, full in zip(mask.shape, (b, h, length, length), strict=True)))


_NO_MASK = np.zeros((1, 1, 1, 1), np.uint8)


def _forward_call(q, k, v, mask, keep, flags):
    b, length, heads, _ = q.shape
    out = (jax.ShapeDtypeStruct(q.shape, q.dtype),
           jax.ShapeDtypeStruct((b, heads, 2, length), jnp.float32))
    return jax.ffi.ffi_call(_FORWARD, out, vmap_method="sequential")(
        q, k, v, mask, keep, **_attrs(flags))


def _attrs(flags: tuple[bool, bool, float]) -> dict[str, Any]:
    has_mask, has_keep, keep_prob = flags
    return {"has_mask": np.int32(has_mask), "has_keep": np.int32(has_keep),
            "keep_prob": np.float32(keep_prob)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, mask, keep, flags):
    """where(keep, softmax(where(mask, q·kᵀ, min)) / keep_prob, 0)·v per (batch, head) on
    ``[B, L, H, D]``; q as given (already scaled); mask, keep uint8."""
    return _forward_call(q, k, v, mask, keep, flags)[0]


def _attention_fwd(q, k, v, mask, keep, flags):
    o, stats = _forward_call(q, k, v, mask, keep, flags)
    return o, (q, k, v, mask, keep, o, stats)


def _attention_bwd(flags, res, do):
    q, k, v, mask, keep, o, stats = res
    grads = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    dq, dk, dv = jax.ffi.ffi_call(_BACKWARD, grads, vmap_method="sequential")(
        q, k, v, mask, keep, o, stats, do, **_attrs(flags))
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None,
              keep: jax.Array | None = None, keep_prob: float = 1.0,
              scale: bool = True) -> jax.Array:
    """``softmax(q·kᵀ/√D)·v`` per head on ``[B, L, H, D]`` by the native kernel (the caller
    checks :func:`enabled` and :func:`supports`); ``mask`` (bool, broadcastable to
    ``[B, H, L, L]`` over its first two axes, True = attend) sets hidden scores to
    ``finfo(float32).min`` as Flax does; ``keep`` (bool ``[B, H, L, L]``) is a dropout keep
    mask applied to the probabilities, kept ones divided by ``keep_prob``; ``scale=False``
    leaves the query as given."""
    if not supports(query, key, value, mask):
        raise ValueError(f"native attention takes [B, L, H, D] float32 q, k, v of one shape "
                         f"with D in {HEAD_DIMS} and a [1|B, 1|H, L, L] mask; got query "
                         f"{query.shape} {query.dtype}, key {key.shape}, value {value.shape}, "
                         f"mask {None if mask is None else mask.shape}: use "
                         f"head_major_attention")
    b, length, h, d = query.shape
    if keep is not None and keep.shape != (b, h, length, length):
        raise ValueError(f"keep of shape {keep.shape}: expected the probabilities' shape "
                         f"{(b, h, length, length)}")
    _registered()
    m = _NO_MASK if mask is None else jnp.broadcast_to(
        mask, (*mask.shape[:2], length, length)).astype(jnp.uint8)
    kp = _NO_MASK if keep is None else keep.astype(jnp.uint8)
    q = query / jnp.sqrt(d).astype(query.dtype) if scale else query
    return _attention(q, key, value, m, kp, (mask is not None, keep is not None,
                                             float(keep_prob)))


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          bias: jax.Array | None = None, mask: jax.Array | None = None,
                          broadcast_dropout: bool = True, dropout_rng: Any = None,
                          dropout_rate: float = 0.0, deterministic: bool = False,
                          dtype: Any = None, precision: Any = None, module: Any = None,
                          force_fp32_for_softmax: bool = False) -> jax.Array:
    """Drop-in for ``nn.dot_product_attention``: the native kernel when it applies (see the
    module docstring; attention dropout draws Flax's keep mask, same key and shape), else the
    head-major or Flax function with the same arguments."""
    if (bias is None and module is None and precision is None
            and (dtype is None or jnp.dtype(dtype) == jnp.float32)
            and supports(query, key, value, mask) and enabled()):
        keep, keep_prob = None, 1.0
        if dropout_rate > 0.0 and not deterministic:
            b, length, h, _ = query.shape
            keep_prob = 1.0 - dropout_rate
            shape = (1, 1, length, length) if broadcast_dropout else (b, h, length, length)
            keep = jnp.broadcast_to(jax.random.bernoulli(dropout_rng, keep_prob, shape),
                                    (b, h, length, length))
        return attention(query, key, value, mask=mask, keep=keep, keep_prob=keep_prob)
    return head_major.attention_fn()(
        query, key, value, bias=bias, mask=mask, broadcast_dropout=broadcast_dropout,
        dropout_rng=dropout_rng, dropout_rate=dropout_rate, deterministic=deterministic,
        dtype=dtype, precision=precision, module=module,
        force_fp32_for_softmax=force_fp32_for_softmax)
