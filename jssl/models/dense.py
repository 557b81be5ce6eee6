"""A ``dot_general`` for dense layers whose kernel gradient XLA:CPU computes without a
transposed copy of the layer's output gradient.

A dense layer y = x·W (x ``[M, K]``, W ``[K, N]``, M = batch × tokens) has two gradients:
dx = dy·Wᵀ and dW = xᵀ·dy, which contracts the M rows of both operands. JAX's transpose
rule for ``dot_general`` hands XLA the kernel gradient in a form for which XLA:CPU (jaxlib
0.10) writes dy transposed, as an ``[N, M]`` buffer, before an Eigen ``dot``: a
``copy_bitcast_fusion`` per layer, often recomputing dy's producer (the GELU's backward, a
residual add), and for an MLP's first layer it copies the 4×-wide hidden gradient, the
largest tensor of the block. :func:`dense_dot_general` gives the dense layers of jssl's
transformers a custom VJP whose kernel gradient is one ``dot_general`` contracting axis 0 of
both operands as they are stored,

    dW[k, n] = Σ_m x[m, k] · dy[m, n]        (lhs_contracting_dims = rhs_contracting_dims = 0)

which XLA:CPU runs with no copy of either operand (the compiled HLO is checked in
``tests/test_models_dense.py``). The forward and dx are ``lax.dot_general``'s; dW is the
same sum of products (float32 rounding may differ). Measured on the CPU presets with
``bench/dense_grad.py`` (docs/performance.md). Only the CPU backend uses it: elsewhere, and
for batched or non-dense dimension numbers, this is ``lax.dot_general``.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

#: False gives every dense layer ``lax.dot_general`` back (a benchmark's A/B switch)
DIRECT_KERNEL_GRAD = True


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [M, K] · w [K, N]``, with the kernel gradient of the module docstring."""
    return lax.dot_general(x, w, (((1,), (0,)), ((), ())))


def _matmul_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return matmul(x, w), (x, w)


def _matmul_bwd(res: tuple[jax.Array, jax.Array],
                dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    dx = lax.dot_general(dy, w, (((1,), (1,)), ((), ())))
    dw = lax.dot_general(x, dy, (((0,), (0,)), ((), ())))
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _is_dense(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> bool:
    """Contracts the trailing axes of ``lhs`` with the leading axes of ``rhs``, in order, no
    batch axes (what ``nn.Dense`` and ``nn.DenseGeneral`` ask for)."""
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc = tuple(lc), tuple(rc)
    n = len(lc)
    return (not lb and not rb and n == len(rc) and 0 < n < lhs.ndim
            and lc == tuple(range(lhs.ndim - n, lhs.ndim)) and rc == tuple(range(n))
            and lhs.shape[lhs.ndim - n:] == rhs.shape[:n])


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                      precision: Any = None, preferred_element_type: Any = None,
                      **kwargs: Any) -> jax.Array:
    """Drop-in ``dot_general`` for ``nn.Dense`` / ``nn.DenseGeneral`` /
    ``nn.MultiHeadDotProductAttention`` (``dot_general=``, ``qkv_dot_general=``,
    ``out_dot_general=``): :func:`matmul` on the CPU backend for dense dimension numbers,
    ``lax.dot_general`` otherwise."""
    if (not DIRECT_KERNEL_GRAD or precision is not None or preferred_element_type is not None
            or kwargs or jax.default_backend() != "cpu"
            or not _is_dense(lhs, rhs, dimension_numbers)):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
    n = len(dimension_numbers[0][0])
    batch, features = lhs.shape[:lhs.ndim - n], rhs.shape[n:]
    k = math.prod(rhs.shape[:n])
    y = matmul(jnp.reshape(lhs, (math.prod(batch), k)),
               jnp.reshape(rhs, (k, math.prod(features))))
    return jnp.reshape(y, (*batch, *features))
