"""Projection, prediction, DINO and linear-probe heads.

* :class:`ProjectionMLP` - SimCLR (Chen et al. 2020) / MoCo v2 / MoCo v3 / Barlow Twins /
  VICReg projector: ``[Linear - BN - ReLU] x (num_layers-1) - Linear (- BN)``.
* :class:`PredictorMLP` - BYOL (Grill et al. 2020) / SimSiam / MoCo v3 predictor:
  ``Linear - BN - ReLU - Linear``.
* :class:`DINOHead` - DINO (Caron et al. 2021): 3-layer GELU MLP to a 256-d bottleneck,
  L2-normalise, then a weight-normalised prototype layer (:class:`WeightNormDense`) whose
  norm ``g`` is fixed to 1 when ``norm_last_layer``; its params live under
  ``params[...]["last_layer"]`` so the trainer can freeze them (see
  :func:`last_layer_mask`).
* :class:`LinearClassifier` - linear probe (optionally preceded by a non-affine BatchNorm, as
  in MAE's linear protocol).

BatchNorm layers take an ``axis_name`` for synchronised statistics under ``shard_map``.
Heads feed losses, so they compute in ``dtype`` but return float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.activations import gelu

Dtype = Any

LAST_LAYER = "last_layer"


def _bn(train: bool, axis_name: str | None, dtype: Dtype, momentum: float,
        affine: bool = True, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5,
                        axis_name=axis_name, dtype=dtype, use_bias=affine, use_scale=affine,
                        name=name)


class ProjectionMLP(nn.Module):
    """MLP projector ``[Linear-BN-ReLU] x (num_layers-1) - Linear (- BN)``.

    Attributes:
      hidden_dim: width of the hidden layers (2048 SimCLR, 4096 MoCo v3, 8192 Barlow).
      out_dim: output width (128 SimCLR, 256 MoCo v3 / BYOL).
      num_layers: number of Linear layers (>= 1; 2 SimCLR/BYOL, 3 SimCLR v2 / MoCo v3).
      use_bn: BatchNorm after the hidden Linear layers (Linear bias dropped when on).
      last_bn: BatchNorm after the last Linear (SimCLR v2, MoCo v3, SimSiam).
      last_bn_affine: learn scale/shift in the last BN (MoCo v3 uses ``affine=False``).
      axis_name: mesh axis for synchronised BN statistics.
      bn_momentum: running-average momentum.
      dtype: computation dtype (output float32).
      keep_hidden: when set, only the first ``keep_hidden`` ``Linear-BN-ReLU`` blocks, same
        names and shapes (SimCLRv2's fine-tuning "from the middle of the head": they are
        initialised from a pretrained projector's and trained with the classifier on top).
    """

    hidden_dim: int = 2048
    out_dim: int = 128
    num_layers: int = 2
    use_bn: bool = True
    last_bn: bool = False
    last_bn_affine: bool = False
    axis_name: str | None = None
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    keep_hidden: int | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        """``x [B, D_in] -> [B, out_dim]`` float32 (``[B, hidden_dim]`` with ``keep_hidden``);
        ``train`` uses/updates ``batch_stats``."""
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers}: need at least 1 Linear layer")
        hidden = self.num_layers - 1 if self.keep_hidden is None else self.keep_hidden
        if not 0 <= hidden <= self.num_layers - 1:
            raise ValueError(f"keep_hidden={self.keep_hidden}: a {self.num_layers}-layer "
                             f"projector has {self.num_layers - 1} hidden blocks to keep")
        x = x.astype(self.dtype)
        for i in range(hidden):
            x = nn.Dense(self.hidden_dim, use_bias=not self.use_bn, dtype=self.dtype,
                         name=f"linear{i}")(x)
            if self.use_bn:
                x = _bn(train, self.axis_name, self.dtype, self.bn_momentum, name=f"bn{i}")(x)
            x = nn.relu(x)
        if self.keep_hidden is not None:
            return x.astype(jnp.float32)
        i = self.num_layers - 1
        x = nn.Dense(self.out_dim, use_bias=not self.last_bn, dtype=self.dtype,
                     name=f"linear{i}")(x)
        if self.last_bn:
            x = _bn(train, self.axis_name, self.dtype, self.bn_momentum,
                    affine=self.last_bn_affine, name=f"bn{i}")(x)
        return x.astype(jnp.float32)


class PredictorMLP(ProjectionMLP):
    """BYOL / MoCo v3 predictor ``Linear(hidden) - BN - ReLU - Linear(out)``.

    Same attributes as :class:`ProjectionMLP`; defaults are BYOL's 4096 -> 256.
    """

    hidden_dim: int = 4096
    out_dim: int = 256
    num_layers: int = 2


class WeightNormDense(nn.Module):
    """Weight-normalised linear layer (Salimans & Kingma 2016), no bias.

    ``W[:, j] = g_j * v[:, j] / ||v[:, j]||`` for ``v`` = ``kernel [D_in, D_out]``: each output
    unit's weight vector has norm ``g_j`` (torch ``weight_norm(dim=0)``). With ``fixed_g``
    (DINO's ``norm_last_layer=True``) ``g`` is the constant 1 and no ``g`` param exists.
    """

    features: int
    fixed_g: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        v = self.param("kernel", nn.initializers.truncated_normal(0.02),
                       (x.shape[-1], self.features))
        w = v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), 1e-12)
        if not self.fixed_g:
            w = w * self.param("g", nn.initializers.ones, (self.features,))
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype))


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalise -> weight-normalised prototypes.

    Attributes:
      out_dim: number of prototypes K (65536 in the paper, 4096 on CIFAR).
      hidden_dim: MLP hidden width (2048).
      bottleneck_dim: MLP output width before normalisation (256).
      num_layers: MLP Linear layers (3).
      use_bn: BatchNorm in the MLP (False for ViT, True in DINO's ResNet-50 runs).
      norm_last_layer: fix the prototype weight norm ``g`` to 1 (paper default True).
      axis_name: mesh axis for synchronised BN (``use_bn`` only).
      dtype: computation dtype (output float32 logits ``[B, out_dim]``).
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers}: need at least 1 Linear layer")
        init = nn.initializers.truncated_normal(0.02)
        x = x.astype(self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=init,
                         name=f"linear{i}")(x)
            if self.use_bn:
                x = _bn(train, self.axis_name, self.dtype, 0.9, name=f"bn{i}")(x)
            x = gelu(x)
        x = nn.Dense(self.bottleneck_dim, dtype=self.dtype, kernel_init=init,
                     name=f"linear{self.num_layers - 1}")(x)
        x = x.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        out = WeightNormDense(self.out_dim, fixed_g=self.norm_last_layer, dtype=self.dtype,
                              name=LAST_LAYER)(x)
        return out.astype(jnp.float32)


def dino_head(name: str = "paper", **overrides: Any) -> DINOHead:
    """Preset DINO heads: ``"tiny"`` (K 64, hidden 32, bottleneck 16), ``"cifar"`` (K 4096),
    ``"paper"`` (K 65536, hidden 2048, bottleneck 256)."""
    presets = {"tiny": dict(out_dim=64, hidden_dim=32, bottleneck_dim=16),
               "cifar": dict(out_dim=4096), "paper": dict(out_dim=65536)}
    if name not in presets:
        raise ValueError(f"dino_head preset {name!r} unknown; choose one of {sorted(presets)}")
    return DINOHead(**{**presets[name], **overrides})


def last_layer_mask(params: Any, name: str = LAST_LAYER) -> Any:
    """Pytree of bools, True on leaves under a module named ``name`` (DINO's prototype layer).

    Use it to freeze the prototypes during the first epoch, e.g.
    ``optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)`` with
    ``labels = jax.tree.map(lambda m: "freeze" if m else "train", last_layer_mask(params))``.
    """
    def is_last(path, _leaf) -> bool:
        return any(getattr(k, "key", None) == name for k in path)

    return jax.tree_util.tree_map_with_path(is_last, params)


class LinearClassifier(nn.Module):
    """Linear probe ``[B, D] -> [B, num_classes]`` float32 logits.

    ``use_bn`` puts a BatchNorm without affine parameters first (MAE linear probing); the
    Linear layer is zero-initialised with a zero bias.
    """

    num_classes: int
    use_bn: bool = False
    axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = True) -> jnp.ndarray:
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes}: must be >= 1")
        x = x.astype(self.dtype)
        if self.use_bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-6,
                             use_bias=False, use_scale=False, axis_name=self.axis_name,
                             dtype=self.dtype, name="bn")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                     name="linear")(x)
        return x.astype(jnp.float32)
