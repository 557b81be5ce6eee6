"""GroupNorm (Wu & He, "Group Normalization", 2018) with per-channel partial sums.

For x of shape [N, ..., C] split into G groups of C/G channels, per example n and group g

    μ_ng = mean over (spatial, c ∈ g) of x,   σ²_ng = mean of x² − μ_ng²,
    y = (x − μ_ng) · rsqrt(σ²_ng + ε) · γ_c + β_c = x · a_nc + b_nc,
    a_nc = γ_c · rsqrt(σ²_ng + ε),  b_nc = β_c − μ_ng · a_nc,

the statistics of ``flax.linen.GroupNorm`` with its default ``use_fast_variance=True``,
in float32 (or wider). The difference is only in how the sums are formed: first over the
spatial axes per channel (a reduction that keeps the channel axis minor, to [N, C]), then
over the C/G channels of each group ([N, C] -> [N, G]). ``flax.linen.GroupNorm`` reshapes
x to [N, ..., G, C/G] and reduces the spatial and the minor axis at once, which XLA:CPU
runs poorly for small C/G. The output is applied as one multiply-add per element with the
per-(example, channel) a and b (its gradient then needs two [N, C] reductions). On the
GroupNorm CNN of issue #8 (``bench/gn_convnet.py``, docs/performance.md) the update is
about 0.8x as long with this layer. Same sums up to float reassociation
(``tests/test_models_norm.py`` checks outputs and gradients against ``nn.GroupNorm`` and a
float64 NumPy reference).

Params (``scale`` and ``bias`` of shape [C]), their init and the dtype rules are
``nn.GroupNorm``'s, so checkpoints are interchangeable. Not supported (use
``nn.GroupNorm``): ``mask``, ``axis_name``, custom ``reduction_axes``,
``use_fast_variance=False``.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def group_count(channels: int, num_groups: int | None, group_size: int | None) -> int:
    """G from exactly one of ``num_groups`` / ``group_size``; it must divide ``channels``."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(f"GroupNorm num_groups={num_groups!r}, group_size={group_size!r}: "
                         f"give exactly one (num_groups=None to use group_size)")
    if group_size is not None:
        if group_size <= 0 or channels % group_size:
            raise ValueError(f"GroupNorm group_size={group_size} does not divide {channels} "
                             f"channels; choose a divisor of the channel count")
        return channels // group_size
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(f"GroupNorm num_groups={num_groups} does not divide {channels} "
                         f"channels; choose a divisor of the channel count")
    return num_groups


def group_stats(x: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """(μ, σ²) per example and group, each [N, G], from x [N, ..., C] in x's dtype (float32
    or wider): per-channel sums over the middle axes, then sums over each group's channels;
    σ² = max(E[x²] − μ², 0)."""
    n, c = x.shape[0], x.shape[-1]
    axes = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[1:-1]) * (c // groups)
    s1 = x.sum(axes).reshape(n, groups, c // groups).sum(-1)
    s2 = (x * x).sum(axes).reshape(n, groups, c // groups).sum(-1)
    mean = s1 / count
    return mean, jnp.maximum(s2 / count - mean * mean, 0.0)


class GroupNorm(nn.Module):
    """Drop-in for ``flax.linen.GroupNorm`` over all axes but the first (batch) and the last
    (channels); same attributes, params and defaults (``num_groups=32``, ``epsilon=1e-6``)."""

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 2:
            raise ValueError(f"GroupNorm input of shape {x.shape}: expected [N, ..., C]")
        channels = x.shape[-1]
        groups = group_count(channels, self.num_groups, self.group_size)
        stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        xs = x.astype(stats_dtype)
        mean, var = group_stats(xs, groups)
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (channels,)
        mul = jnp.repeat(lax.rsqrt(var + self.epsilon), channels // groups, axis=-1)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
            mul = mul * scale
            args.append(scale)
        shift = -jnp.repeat(mean, channels // groups, axis=-1) * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
            shift = shift + bias
            args.append(bias)
        y = xs * mul.reshape(shape) + shift.reshape(shape)
        return jnp.asarray(y, nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype))
