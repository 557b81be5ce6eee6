"""Masked Autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022).

1. ``patchify`` the image into ``L`` patches and embed them (+ fixed sin-cos positions);
2. per sample, keep a random ``len_keep = int(L * (1 - mask_ratio))`` subset: argsort of
   uniform noise gives ``ids_shuffle``; its first ``len_keep`` entries are ``ids_keep`` and
   ``ids_restore = argsort(ids_shuffle)`` undoes the shuffle (same convention as
   ``jssl.masking.random_patch_mask``);
3. the ViT encoder runs on the VISIBLE tokens only (+ cls): sequence length ``len_keep + 1``,
   the source of MAE's 3-4x saving;
4. a linear layer maps to the decoder width, shared learned mask tokens are appended, the
   sequence is un-shuffled with ``ids_restore``, decoder sin-cos positions are added and
   lightweight decoder blocks run on all ``L + 1`` tokens;
5. a linear head predicts the ``p*p*C`` pixels of every patch.

The reconstruction loss (MSE on masked patches, optionally on per-patch normalised pixels,
``norm_pix_loss``) lives with the method; this module returns ``pred``, ``mask`` and
``target = patchify(images)``, all float32.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.vit import (
    Block,
    ViT,
    patchify,
    run_blocks,
    sincos_2d_pos_embed,
    take_tokens,
)

Dtype = Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=4, dim=32, depth=2, num_heads=2,
                 decoder_dim=32, decoder_depth=1, decoder_heads=2),
    "vit_b16": dict(patch_size=16, dim=768, depth=12, num_heads=12,
                    decoder_dim=512, decoder_depth=8, decoder_heads=16),
    "vit_l16": dict(patch_size=16, dim=1024, depth=24, num_heads=16,
                    decoder_dim=512, decoder_depth=8, decoder_heads=16),
}


class MAEOutput(NamedTuple):
    """``pred``/``target`` ``[B, L, p*p*C]`` float32; ``mask`` ``[B, L]`` (1 = masked);
    ``latent`` the encoder output ``[B, len_keep + 1, dim]`` (cls first); ``ids_restore``
    ``[B, L]`` the un-shuffle indices used (``argsort(ids_restore)[:, :len_keep]`` = kept)."""

    pred: jnp.ndarray
    mask: jnp.ndarray
    target: jnp.ndarray
    latent: jnp.ndarray
    ids_restore: jnp.ndarray


def random_masking(key: jax.Array, batch: int, num_patches: int, mask_ratio: float):
    """Per-sample random subset of patches (MAE's ``random_masking``).

    Returns ``(ids_keep [B, len_keep], ids_restore [B, L], mask [B, L])`` with
    ``len_keep = int(L * (1 - mask_ratio))`` and ``mask`` 1 on removed patches.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio}: must be in [0, 1)")
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no patch of {num_patches}; lower it")
    noise = jax.random.uniform(key, (batch, num_patches))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = mask_from_ids(ids_restore, len_keep)
    return ids_keep, ids_restore, mask


def mask_from_ids(ids_restore: jnp.ndarray, len_keep: int) -> jnp.ndarray:
    """Binary mask ``[B, L]`` (1 = masked) in raster order from ``ids_restore``."""
    return (ids_restore >= len_keep).astype(jnp.float32)


class MAE(nn.Module):
    """MAE encoder + decoder. Encoder attributes as :class:`~jssl.models.vit.ViT`.

    Attributes:
      decoder_dim, decoder_depth, decoder_heads: the lightweight decoder (512, 8, 16).
      mask_ratio: fraction of patches removed (0.75).
      channels: image channels C (the prediction head outputs p*p*C).
      dtype: computation dtype (params float32; outputs float32).
    """

    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    drop_path_rate: float = 0.0
    channels: int = 3
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    def setup(self) -> None:
        self.encoder = ViT(patch_size=self.patch_size, dim=self.dim, depth=self.depth,
                           num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, pool="none",
                           use_cls=True, pos_embed="sincos",
                           drop_path_rate=self.drop_path_rate, dtype=self.dtype,
                           attention=self.attention)
        init = nn.initializers.xavier_uniform()
        self.decoder_embed = nn.Dense(self.decoder_dim, dtype=self.dtype, kernel_init=init)
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                                     (1, 1, self.decoder_dim))
        self.decoder_blocks = [Block(self.decoder_heads, self.mlp_ratio, dtype=self.dtype,
                                     attention=self.attention)
                               for _ in range(self.decoder_depth)]
        self.decoder_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)
        self.decoder_pred = nn.Dense(self.patch_size ** 2 * self.channels, dtype=self.dtype,
                                     kernel_init=init)

    def encode(self, images: jnp.ndarray, ids_keep: jnp.ndarray, *,
               train: bool = False) -> jnp.ndarray:
        """Encoder tokens ``[B, len_keep + 1, dim]`` of the visible patches (cls first)."""
        return self.encoder(images, keep_ids=ids_keep, keep_distinct=True, train=train)

    def decode(self, latent: jnp.ndarray, ids_restore: jnp.ndarray, *,
               train: bool = False) -> jnp.ndarray:
        """Pixel predictions ``[B, L, p*p*C]`` (float32) for every patch in raster order."""
        b, n_vis = latent.shape[0], latent.shape[1] - 1
        num_patches = ids_restore.shape[1]
        x = self.decoder_embed(latent)
        mask_tokens = jnp.broadcast_to(self.mask_token, (b, num_patches - n_vis,
                                                         self.decoder_dim)).astype(x.dtype)
        x_ = take_tokens(jnp.concatenate([x[:, 1:], mask_tokens], axis=1), ids_restore,
                         distinct=True)
        x = jnp.concatenate([x[:, :1], x_], axis=1)
        g = int(round(num_patches ** 0.5))
        if g * g != num_patches:
            raise ValueError(f"ids_restore covers {num_patches} patches, not a square grid")
        pos = sincos_2d_pos_embed(self.decoder_dim, (g, g), cls_token=True)
        x = x + jnp.asarray(pos)[None].astype(x.dtype)
        x = run_blocks(self.decoder_blocks, x, self.attention, train=train)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:].astype(jnp.float32)

    def __call__(self, images: jnp.ndarray, *, ids_keep: jnp.ndarray | None = None,
                 ids_restore: jnp.ndarray | None = None, train: bool = False) -> MAEOutput:
        """Mask, encode, decode ``images [B, H, W, channels]``.

        Pass ``ids_keep [B, len_keep]`` and ``ids_restore [B, L]`` together, or neither: then
        they are sampled with ``mask_ratio`` from the ``"masking"`` RNG stream
        (``apply(..., rngs={"masking": key})``).
        """
        if images.ndim != 4 or images.shape[-1] != self.channels:
            raise ValueError(f"images of shape {images.shape}: expected [B, H, W, "
                             f"{self.channels}] (set channels= to match)")
        p = self.patch_size
        if images.shape[1] != images.shape[2] or images.shape[1] % p:
            raise ValueError(f"image size {images.shape[1:3]}: MAE needs square images with "
                             f"side divisible by patch_size={p}")
        num_patches = (images.shape[1] // p) ** 2
        if (ids_keep is None) != (ids_restore is None):
            raise ValueError("pass ids_keep and ids_restore together, or neither to sample")
        if ids_keep is None:
            ids_keep, ids_restore, mask = random_masking(
                self.make_rng("masking"), images.shape[0], num_patches, self.mask_ratio)
        else:
            if ids_restore.shape != (images.shape[0], num_patches):
                raise ValueError(f"ids_restore of shape {ids_restore.shape}: expected "
                                 f"{(images.shape[0], num_patches)}")
            mask = mask_from_ids(ids_restore, ids_keep.shape[1])
        latent = self.encode(images, ids_keep, train=train)
        pred = self.decode(latent, ids_restore, train=train)
        return MAEOutput(pred=pred, mask=mask, target=patchify(images, p).astype(jnp.float32),
                         latent=latent, ids_restore=ids_restore)


def mae(name: str = "vit_b16", **overrides: Any) -> MAE:
    """Build a preset MAE: ``"tiny"``, ``"vit_b16"`` (decoder 512-d, 8 blocks, 16 heads),
    ``"vit_l16"``; ``overrides`` set any :class:`MAE` attribute (e.g. ``mask_ratio``)."""
    if name not in PRESETS:
        raise ValueError(f"mae preset {name!r} unknown; choose one of {sorted(PRESETS)}")
    return MAE(**{**PRESETS[name], **overrides})
