"""Shared helpers for the losses: argument checks and axis-aware collectives.

Every collective here accepts ``axis_name=None`` (global arrays, no collective)
or a mesh axis name / tuple of names (inside ``jax.shard_map``), so one loss body
serves both modes.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from numbers import Number

import jax
import jax.numpy as jnp

AxisName = Hashable | Sequence[Hashable] | None

# Similarities are computed at full float32 precision on every backend (on GPU and
# TPU the default matmul precision would round fp32 inputs to tf32/bf16).
PRECISION = jax.lax.Precision.HIGHEST


def as_f32(x: jax.Array) -> jax.Array:
    """Upcast to float32 (bfloat16/float16 embeddings are scored in float32)."""
    return jnp.asarray(x).astype(jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), in float32."""
    x = as_f32(x)
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def matmul_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b.T in float32 at HIGHEST precision."""
    return jnp.matmul(as_f32(a), as_f32(b).T, precision=PRECISION)


# ----------------------------------------------------------------- argument checks
def check_positive(name: str, value, fix: str = "") -> None:
    """Raise if a concrete hyperparameter is not > 0 (traced values are skipped)."""
    if isinstance(value, Number) and not value > 0:
        hint = f"; {fix}" if fix else ""
        raise ValueError(f"{name} must be > 0, got {value}{hint}")


def check_ndim(name: str, x: jax.Array, ndim: int, layout: str) -> None:
    if jnp.ndim(x) != ndim:
        raise ValueError(
            f"{name} must have {ndim} dims {layout}, got shape {tuple(jnp.shape(x))}"
        )


def check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(jnp.shape(a))} "
            f"and {tuple(jnp.shape(b))}; pass matching arrays (no broadcasting is done)"
        )


def check_dim(name: str, x: jax.Array, axis: int, size: int, what: str) -> None:
    if jnp.shape(x)[axis] != size:
        raise ValueError(
            f"{name} has shape {tuple(jnp.shape(x))} but its axis {axis} must be {size} "
            f"({what})"
        )


IMPLS = ("gather", "ring")


def check_impl(impl: str, block_size: int) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not (isinstance(block_size, int) and block_size > 0):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}; e.g. 1024")


# ------------------------------------------------------------------- collectives
def axis_size(axis_name: AxisName) -> int:
    """Number of devices along ``axis_name`` (1 when None)."""
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def axis_index(axis_name: AxisName) -> jax.Array | int:
    """This device's position along ``axis_name`` (0 when None)."""
    return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def gather(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Concatenate every device's shard along axis 0, in global batch order.

    Differentiable: the transpose of ``all_gather`` is ``psum_scatter``, so each
    device receives the gradient of its own rows from every other device.
    """
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def gather_replicated(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Like ``gather`` but typed as replicated across ``axis_name``, for state updates.

    ``shard_map`` types an ``all_gather`` result as device-varying, so state that
    must come out replicated (``out_specs=P()``, e.g. the MoCo queue) is built
    with a ``psum`` instead: each device writes its rows into a zero [P·n, ...]
    buffer and the buffers are summed. Costs one all-reduce of the gathered size.
    """
    if axis_name is None:
        return x
    n = x.shape[0]
    buf = jnp.zeros((axis_size(axis_name) * n, *x.shape[1:]), x.dtype)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, x, axis_index(axis_name) * n, axis=0)
    return jax.lax.psum(buf, axis_name)


def psum(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmean(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def global_mean(local_sum: jax.Array, local_count: int, axis_name: AxisName) -> jax.Array:
    """Sum over all devices divided by the global count (count equal on every device)."""
    return psum(local_sum, axis_name) / (local_count * axis_size(axis_name))
