"""ResNet-18/50 backbones (He et al., "Deep Residual Learning for Image Recognition", 2016).

The SSL variants used by SimCLR, MoCo, BYOL, Barlow Twins, VICReg and DINO:

* ``stem="imagenet"``: 7x7 stride-2 conv + 3x3 stride-2 max-pool (224 px inputs);
  ``stem="cifar"``: a single 3x3 stride-1 conv and no pool (28-32 px inputs, as in the
  SimCLR CIFAR recipe and solo-learn); ``stem="s2d"``: 2x2 space-to-depth (lossless:
  [H, W, C] -> [H/2, W/2, 4C]) then a 3x3 stride-1 conv, so every stage runs at half the
  resolution of ``"cifar"`` — about 4x fewer FLOPs for small images, the choice for CPU.
* ``norm="batch"`` with an optional ``axis_name``: synchronised (global) BatchNorm statistics
  over that mesh axis when the module runs inside ``shard_map`` (SimCLR "global BN",
  BYOL ``cross_replica_axis``). ``norm="group"``: GroupNorm (``jssl.models.norm``, with
  ``nn.GroupNorm``'s params), which keeps no ``batch_stats``.
* Bottleneck blocks stride in the 3x3 conv ("ResNet v1.5", as torchvision).

The classification layer is removed: ``__call__`` returns globally average-pooled features
``[B, C]`` (and the final feature map ``[B, H', W', C]`` if ``return_feature_map``).
Params are float32; computation runs in ``dtype``; the returned features are in ``dtype``.

    model = resnet("resnet18", stem="cifar")
    variables = model.init(key, images, train=False)
    feats, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.conv import IMPLS as CONV_IMPLS
from jssl.models.conv import Conv
from jssl.models.norm import BatchNorm, GroupNorm

Dtype = Any

_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision kaiming

# ``act``: ReLU as in the paper; SiLU / GELU are smooth (no kink at 0), which makes a float32
# step a continuous function of rounding (the 1-vs-N-device tests use that, see tests/).
ACTIVATIONS = {"relu": nn.relu, "silu": nn.silu, "gelu": nn.gelu}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block="basic", stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
    # tiny with a 256-wide last stage (4x4 maps at 28 px): 256-d features, 1.4-1.8x the step
    # time of tiny on a 2-core CPU; the quickstart's backbone.
    "tiny_wide": dict(block="basic", stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 256)),
    "resnet18": dict(block="basic", stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    "resnet34": dict(block="basic", stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet50": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet101": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3),
                      widths=(64, 128, 256, 512)),
}


def conv_class(impl: str) -> Any:
    """``nn.Conv`` for ``"xla"``; :class:`jssl.models.conv.Conv` (same params, faster kernel
    gradient on CPU) for ``"fast"``."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r}: use one of {CONV_IMPLS}")
    return nn.Conv if impl == "xla" else functools.partial(Conv, impl=impl)


#: BatchNorm layer of the ResNets: jssl's (``jssl.models.norm``; True) or ``nn.BatchNorm``
#: (False); same variables. None: jssl's on CPU, where it was measured faster
#: (bench/batch_norm.py), ``nn.BatchNorm`` on GPU/TPU until it is measured there. Read at
#: trace time; also a benchmark's A/B switch.
JSSL_BATCHNORM: bool | None = None


def _norm_factory(norm: str, *, train: bool, axis_name: str | None, momentum: float,
                  num_groups: int, dtype: Dtype):
    """Return ``make(features, zero_init=False, name=...)`` building the configured norm."""

    def make(features: int, zero_init: bool = False, name: str | None = None) -> nn.Module:
        scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
        if norm == "batch":
            ours = (jax.default_backend() == "cpu" if JSSL_BATCHNORM is None
                    else JSSL_BATCHNORM)
            layer = BatchNorm if ours else nn.BatchNorm
            return layer(use_running_average=not train, momentum=momentum, epsilon=1e-5,
                         axis_name=axis_name, dtype=dtype, scale_init=scale_init, name=name)
        groups = min(num_groups, features)
        if features % groups:
            raise ValueError(f"GroupNorm: num_groups={num_groups} does not divide {features} "
                             f"channels; choose num_groups dividing every stage width")
        return GroupNorm(num_groups=groups, epsilon=1e-5, dtype=dtype, scale_init=scale_init,
                         name=name)

    return make


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut; expansion 1."""

    features: int
    strides: int = 1
    make_norm: Any = None
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "fast"
    act: Any = nn.relu
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(conv_class(self.conv_impl), use_bias=False, dtype=self.dtype,
                                 kernel_init=_CONV_INIT)
        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = self.act(self.make_norm(self.features, name="norm1")(y))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.make_norm(self.features, zero_init=self.zero_init_residual, name="norm2")(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv(self.features, (1, 1), s, name="proj_conv")(x)
            x = self.make_norm(self.features, name="proj_norm")(x)
        return self.act(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a projection shortcut when needed."""

    features: int
    strides: int = 1
    make_norm: Any = None
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "fast"
    act: Any = nn.relu
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(conv_class(self.conv_impl), use_bias=False, dtype=self.dtype,
                                 kernel_init=_CONV_INIT)
        out = self.features * 4
        s = (self.strides, self.strides)
        y = conv(self.features, (1, 1), name="conv1")(x)
        y = self.act(self.make_norm(self.features, name="norm1")(y))
        y = conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.act(self.make_norm(self.features, name="norm2")(y))
        y = conv(out, (1, 1), name="conv3")(y)
        y = self.make_norm(out, zero_init=self.zero_init_residual, name="norm3")(y)
        if x.shape[-1] != out or self.strides != 1:
            x = conv(out, (1, 1), s, name="proj_conv")(x)
            x = self.make_norm(out, name="proj_norm")(x)
        return self.act(x + y)


def space_to_depth(x: jnp.ndarray, block: int) -> jnp.ndarray:
    """[B, H, W, C] -> [B, H/b, W/b, b*b*C]: each b x b pixel block becomes one pixel's channels
    (ordered row, column, channel within the block)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


class ResNet(nn.Module):
    """ResNet backbone returning pooled features ``[B, widths[-1] * expansion * width]``.

    Attributes:
      block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101).
      stage_sizes: number of blocks in each stage.
      widths: base channel count of each stage (bottleneck output is 4x this).
      width: integer width multiplier (SimCLR's ResNet-50 (2x), (4x)).
      stem: ``"cifar"``, ``"s2d"`` or ``"imagenet"`` (see module docstring).
      norm: ``"batch"`` or ``"group"``.
      axis_name: mesh axis for synchronised BatchNorm statistics (inside ``shard_map``).
      bn_momentum: running-average momentum of BatchNorm (0.9 as torch's 0.1).
      num_groups: GroupNorm groups (capped at the channel count).
      zero_init_residual: zero-init the last norm scale of each block (Goyal et al. 2017).
      return_feature_map: also return the last feature map ``[B, H', W', C]``.
      dtype: computation dtype (params stay float32).
      act: ``"relu"`` (the default, as the paper), ``"silu"`` or ``"gelu"``.
      conv_impl: ``"fast"`` (the default: ``jssl.models.conv.Conv``, ``nn.Conv``'s params
        and result, with a phase-decomposed input gradient for strided CPU layers),
        ``"fast_chunked_dw"`` (also a chunked kernel gradient on high-resolution CPU layers)
        or ``"xla"`` (``nn.Conv``). ``"fast"`` was the fastest of the three for the SimCLR
        and BYOL CPU updates (``bench/compare.py``, docs/performance.md); on GPU/TPU all
        three run XLA's gradients.
    """

    block: str = "basic"
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    width: int = 1
    stem: str = "imagenet"
    norm: str = "batch"
    axis_name: str | None = None
    bn_momentum: float = 0.9
    num_groups: int = 32
    zero_init_residual: bool = False
    return_feature_map: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "fast"
    act: str = "relu"

    def _check(self, x: jnp.ndarray) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block={self.block!r}: use 'basic' or 'bottleneck'")
        if self.stem not in ("cifar", "s2d", "imagenet"):
            raise ValueError(f"stem={self.stem!r}: use 'cifar' or 's2d' (28-32 px) or 'imagenet'")
        if self.stem == "s2d" and (x.shape[1] % 2 or x.shape[2] % 2):
            raise ValueError(f"stem='s2d' needs even image sides, got {x.shape[1:3]}; "
                             f"resize to an even size or use stem='cifar'")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act={self.act!r}: use one of {sorted(ACTIVATIONS)}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm={self.norm!r}: use 'batch' or 'group'")
        if len(self.stage_sizes) != len(self.widths) or not self.stage_sizes:
            raise ValueError(f"stage_sizes={tuple(self.stage_sizes)} and widths="
                             f"{tuple(self.widths)} must be non-empty and of equal length")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width={self.width!r}: the width multiplier must be an int >= 1")
        if x.ndim != 4:
            raise ValueError(f"images of shape {x.shape}: expected NHWC [B, H, W, C]")

    @property
    def num_features(self) -> int:
        """Channel count of the pooled output."""
        return self.widths[-1] * self.width * (4 if self.block == "bottleneck" else 1)

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = True):
        """Pooled features ``[B, C]`` (and the feature map if ``return_feature_map``).

        ``train=True`` normalises with batch statistics and updates the running averages in
        the mutable ``batch_stats`` collection; ``train=False`` uses the running averages.
        """
        self._check(x)
        make_norm = _norm_factory(self.norm, train=train, axis_name=self.axis_name,
                                  momentum=self.bn_momentum, num_groups=self.num_groups,
                                  dtype=self.dtype)
        x = x.astype(self.dtype)
        conv, act = conv_class(self.conv_impl), ACTIVATIONS[self.act]
        w0 = self.widths[0] * self.width
        if self.stem == "imagenet":
            x = conv(w0, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                     dtype=self.dtype, kernel_init=_CONV_INIT, name="stem_conv")(x)
            x = act(make_norm(w0, name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            if self.stem == "s2d":
                x = space_to_depth(x, 2)
            x = conv(w0, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                     kernel_init=_CONV_INIT, name="stem_conv")(x)
            x = act(make_norm(w0, name="stem_norm")(x))
        block_cls = BasicBlock if self.block == "basic" else Bottleneck
        for i, (n_blocks, w) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(n_blocks):
                strides = 2 if (i > 0 and j == 0) else 1
                x = block_cls(w * self.width, strides=strides, make_norm=make_norm,
                              zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                              conv_impl=self.conv_impl, act=act,
                              name=f"stage{i + 1}_block{j + 1}")(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        if self.return_feature_map:
            return pooled, x
        return pooled


def resnet(name: str = "resnet18", **overrides: Any) -> ResNet:
    """Build a preset ResNet: ``"tiny"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"``,
    ``"resnet101"``; ``overrides`` set any other :class:`ResNet` attribute."""
    if name not in PRESETS:
        raise ValueError(f"resnet preset {name!r} unknown; choose one of {sorted(PRESETS)}")
    return ResNet(**{**PRESETS[name], **overrides})
