"""GroupNorm (Wu & He, "Group Normalization", 2018) with per-channel partial sums, and
BatchNorm (Ioffe & Szegedy 2015) whose narrow-channel sums run over wide rows.

GroupNorm
---------

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

BatchNorm
---------
Per channel c, over every position m of the M = N·H·W (or N·L) positions of x [..., C]:

    μ_c = (1/M) Σ_m x_mc,   σ²_c = max((1/M) Σ_m x²_mc − μ_c², 0)    (``use_fast_variance``)
    y = x · a_c + b_c,   a_c = γ_c · rsqrt(σ²_c + ε),   b_c = β_c − μ_c · a_c,

synchronised over ``axis_name`` by one ``pmean`` of (μ, E[x²]) as ``flax.linen.BatchNorm``;
running averages r ← momentum·r + (1 − momentum)·batch statistic (not while initialising).
Written this way (statistics as plain sums, the output as one multiply-add per element with
the per-channel a and b, as GroupNorm above) its update is faster on XLA:CPU than
``nn.BatchNorm``'s ((x − μ)·a + β): the CPU ResNet presets' updates take 0.86-0.89 of their
time with it (``bench/batch_norm.py``, docs/performance.md). On CPU, for C < 128, the two
statistics' sums also run over wide rows: x is viewed (a free reshape of the row-major
buffer) as [M/k, k·C], k the largest power of two ≤ 128/C dividing M, its columns summed,
then the k partial sums of each channel; XLA:CPU sums an [M, 8] array about half as fast as
the same buffer viewed as [M/16, 128]. Same sums up to float reassociation; params,
``batch_stats`` and defaults are ``nn.BatchNorm``'s (checkpoints are interchangeable;
``tests/test_models_norm.py`` checks values, running averages and gradients against it and a
float64 NumPy reference, and the synchronised statistics on 1 and 8 devices). Not supported
(use ``nn.BatchNorm``): ``mask``, feature axes other than the last, ``use_fast_variance=False``.
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


def scale_shift(module: nn.Module, x: jax.Array, xs: jax.Array, mean: jax.Array,
                inv: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """y = xs·a + b in the output dtype (flax's rules), a = inv·γ and b = β − mean·a, with
    γ, β of shape [C] created as ``module``'s ``scale`` / ``bias`` params when it uses them;
    ``mean`` and ``inv`` broadcast to a's and b's ``shape`` (e.g. [N, 1, 1, C] or [C])."""
    c = x.shape[-1]
    args = [x]
    if module.use_scale:
        scale = module.param("scale", module.scale_init, (c,), module.param_dtype)
        inv = inv * scale
        args.append(scale)
    shift = -mean * inv
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (c,), module.param_dtype)
        shift = shift + bias
        args.append(bias)
    y = xs * inv.reshape(shape) + shift.reshape(shape)
    return jnp.asarray(y, nn.dtypes.canonicalize_dtype(*args, dtype=module.dtype))


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
        return scale_shift(self, x, xs, jnp.repeat(mean, channels // groups, axis=-1),
                           jnp.repeat(lax.rsqrt(var + self.epsilon), channels // groups,
                                      axis=-1), shape)


#: sum narrow-channel BatchNorm statistics over wide rows on CPU (read at trace time; an A/B
#: switch for bench/bn_wide_rows.py)
WIDE_ROWS = True
#: the row width BatchNorm aims for on CPU
ROW_WIDTH = 128


def row_fold(positions: int, channels: int) -> int:
    """k: the largest power of two with k·channels ≤ ROW_WIDTH that divides ``positions``
    (1 off CPU, with WIDE_ROWS off, or for channels ≥ ROW_WIDTH)."""
    if not WIDE_ROWS or jax.default_backend() != "cpu":
        return 1
    k = 1
    while 2 * k * channels <= ROW_WIDTH and positions % (2 * k) == 0:
        k *= 2
    return k


class BatchNorm(nn.Module):
    """Drop-in for ``flax.linen.BatchNorm`` normalising over all axes but the last; same
    attributes, params, ``batch_stats`` and defaults (momentum 0.99, epsilon 1e-5)."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = nn.initializers.zeros
    scale_init: Any = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        if x.ndim < 2:
            raise ValueError(f"BatchNorm input of shape {x.shape}: expected [..., C] with at "
                             f"least one axis to normalise over")
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        xs = x.astype(stats_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            positions = x.size // c
            k = row_fold(positions, c)
            rows = xs.reshape(positions // k, k * c)
            mean = rows.sum(0).reshape(k, c).sum(0) / positions
            mean2 = (rows * rows).sum(0).reshape(k, c).sum(0) / positions
            if self.axis_name is not None and not self.is_initializing():
                mean, mean2 = lax.pmean(jnp.stack([mean, mean2]), self.axis_name,
                                        axis_index_groups=self.axis_index_groups)
            var = jnp.maximum(mean2 - mean * mean, 0.0)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return scale_shift(self, x, xs, mean, lax.rsqrt(var + self.epsilon), (c,))
