"""Two-tower image-text model for CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023).

Any image tower returning pooled features ``[B, D_i]`` and any text tower returning
``[B, D_t]`` are linearly projected (no bias) to a shared ``embed_dim`` and L2-normalised in
float32. A learnable temperature is kept in log space, ``logit_scale = log(t)``:

* CLIP: ``t`` initialised to ``1/0.07`` (``logit_scale_init = ln(1/0.07)``), no bias;
* SigLIP: ``t`` initialised to 10 (``ln 10``) and a learnable ``logit_bias`` initialised
  to -10.

``max_logit_scale`` (``ln 100``) clamps the log-scale **on the forward pass**:
``t = exp(min(logit_scale, max_logit_scale))``. CLIP/open_clip instead clip the parameter
after each optimiser step; the forward clamp gives the same forward values (t <= 100), and
while clamped the gradient with respect to ``logit_scale`` is zero, so the parameter stops
growing without a separate post-step hook.

Towers get ``train=train`` when their ``__call__`` has a ``train`` argument, else
``deterministic=not train`` when it has ``deterministic``, else nothing. A text tower must
return pooled features; wrap a sequence model (e.g. take the EOS/cls token) if needed.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0
MAX_LOGIT_SCALE = math.log(100.0)


def _mode_kwargs(module: nn.Module, train: bool) -> dict[str, bool]:
    """``{"train": train}`` or ``{"deterministic": not train}``, whichever the tower's
    ``__call__`` accepts (``train`` preferred), else ``{}``."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return {}
    if "train" in params:
        return {"train": train}
    if "deterministic" in params:
        return {"deterministic": not train}
    return {}


def _l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TwoTower(nn.Module):
    """Image and text towers with shared-space projections and a learnable temperature.

    Attributes:
      image_encoder: module mapping images to ``[B, D_i]``.
      text_encoder: module mapping tokens to ``[B, D_t]``.
      embed_dim: shared embedding width.
      logit_scale_init: initial ``log(t)`` (CLIP ``ln(1/0.07)``, SigLIP ``ln 10``).
      logit_bias_init: initial bias (SigLIP -10) or ``None`` for no bias (CLIP).
      max_logit_scale: forward clamp of ``log(t)`` (``ln 100``).
      dtype: computation dtype of the projections (embeddings returned float32).
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    embed_dim: int = 512
    logit_scale_init: float = CLIP_LOGIT_SCALE_INIT
    logit_bias_init: float | None = None
    max_logit_scale: float = MAX_LOGIT_SCALE
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim}: must be >= 1")
        if self.logit_scale_init > self.max_logit_scale:
            raise ValueError(f"logit_scale_init={self.logit_scale_init} exceeds "
                             f"max_logit_scale={self.max_logit_scale}; lower the init")
        self.image_proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
        self.text_proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(
            self.logit_scale_init), (), jnp.float32)
        if self.logit_bias_init is not None:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(
                self.logit_bias_init), (), jnp.float32)

    def encode_image(self, images: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """L2-normalised float32 image embeddings ``[B, embed_dim]``."""
        feats = self.image_encoder(images, **_mode_kwargs(self.image_encoder, train))
        return _l2_normalize(self.image_proj(feats))

    def encode_text(self, tokens: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """L2-normalised float32 text embeddings ``[B, embed_dim]``."""
        feats = self.text_encoder(tokens, **_mode_kwargs(self.text_encoder, train))
        return _l2_normalize(self.text_proj(feats))

    def temperature(self) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """``(exp(min(logit_scale, max_logit_scale)), logit_bias or None)``."""
        scale = jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale))
        bias = self.logit_bias if self.logit_bias_init is not None else None
        return scale, bias

    def __call__(self, images: jnp.ndarray, tokens: jnp.ndarray, *, train: bool = False):
        """Returns ``(img_emb [B, E], txt_emb [B, E], logit_scale_exp [], logit_bias [] |
        None)``; logits are ``logit_scale_exp * img_emb @ txt_emb.T (+ logit_bias)``."""
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"images batch {images.shape[0]} != tokens batch "
                             f"{tokens.shape[0]}; pass paired image-text batches")
        img = self.encode_image(images, train=train)
        txt = self.encode_text(tokens, train=train)
        scale, bias = self.temperature()
        return img, txt, scale, bias


def two_tower(kind: str, image_encoder: nn.Module, text_encoder: nn.Module,
              **overrides: Any) -> TwoTower:
    """``kind="clip"`` (scale ln(1/0.07), no bias) or ``"siglip"`` (scale ln 10, bias -10)."""
    presets = {"clip": dict(logit_scale_init=CLIP_LOGIT_SCALE_INIT, logit_bias_init=None),
               "siglip": dict(logit_scale_init=SIGLIP_LOGIT_SCALE_INIT,
                              logit_bias_init=SIGLIP_LOGIT_BIAS_INIT)}
    if kind not in presets:
        raise ValueError(f"two_tower kind {kind!r} unknown; choose 'clip' or 'siglip'")
    return TwoTower(image_encoder, text_encoder, **{**presets[kind], **overrides})
