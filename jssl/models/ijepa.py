"""I-JEPA's predictor (Assran et al. 2023, ``VisionTransformerPredictor`` in ijepa's
``src/models/vision_transformer.py``): a narrow ViT that maps context tokens to the
representations of target blocks.

    x    = Linear(D → d)(context tokens) + pos_d[context positions]             [B, Kc, d]
    for each target block m (folded into the batch: B·M rows):
      q_m  = mask_token + pos_d[target positions of block m]                    [B, Kt, d]
      y_m  = ViT blocks on [x ; q_m] (keys: valid context slots and valid target slots)
      ŝ_m  = Linear(d → D)(LayerNorm(y_m)[Kc:])                                 [B, Kt, D]

``pos_d`` are fixed 2-D sin-cos positions of width d, as I-JEPA's predictor.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jssl.models.vit import Block, key_padding_mask, sincos_2d_pos_embed


class Predictor(nn.Module):
    """Attributes: ``grid`` (patch grid), ``dim`` (d), ``depth``, ``num_heads``,
    ``out_dim`` (D, the encoder width), ``mlp_ratio``, ``dtype``."""

    grid: tuple[int, int]
    dim: int = 384
    depth: int = 6
    num_heads: int = 6
    out_dim: int = 768
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, context: jnp.ndarray, context_ids: jnp.ndarray,
                 context_valid: jnp.ndarray, target_ids: jnp.ndarray,
                 target_valid: jnp.ndarray) -> jnp.ndarray:
        """context [B, Kc, D], context_ids/valid [B, Kc], target_ids/valid [B, M, Kt]
        → predictions [B, M, Kt, D] (float32)."""
        b, m, kt = target_ids.shape
        kc = context.shape[1]
        pos = jnp.asarray(sincos_2d_pos_embed(self.dim, self.grid), self.dtype)
        x = nn.Dense(self.dim, dtype=self.dtype, name="embed")(context.astype(self.dtype))
        x = x + pos[context_ids]
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.dim,))
        q = mask_token.astype(self.dtype) + pos[target_ids]                 # [B, M, Kt, d]
        x = jnp.repeat(x[:, None], m, axis=1)                                # [B, M, Kc, d]
        tokens = jnp.concatenate([x, q], axis=2).reshape(b * m, kc + kt, self.dim)
        valid = jnp.concatenate([jnp.repeat(context_valid[:, None], m, axis=1), target_valid],
                                axis=2).reshape(b * m, kc + kt)
        attn_mask = key_padding_mask(valid)
        for i in range(self.depth):
            tokens = Block(self.num_heads, self.mlp_ratio, dtype=self.dtype,
                           name=f"block{i}")(tokens, mask=attn_mask)
        tokens = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(tokens)
        out = nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(tokens[:, kc:])
        return out.reshape(b, m, kt, self.out_dim).astype(jnp.float32)
