"""Masked Autoencoders (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

    for a minibatch x of N images:
        x = random resized crop (scale 0.2–1) + horizontal flip        (MAE's only augmentation)
        per image, keep a random subset of len_keep = int(L·(1 − r)) of its L patches (r = 0.75)
        z = ViT encoder on the VISIBLE patches only (+ cls)            ([N, len_keep + 1, D])
        x̂ = decoder(z ∪ mask tokens, un-shuffled)                      ([N, L, p²C] pixels)
        t_l = (x_l − mean(x_l)) / sqrt(var(x_l) + 1e-6)                (norm_pix_loss, per patch)
        loss = Σ_{n,l} m_nl · mean_P (x̂_nl − t_nl)² / Σ_{n,l} m_nl    (masked patches only)
    optimiser: AdamW (β1 0.9, β2 0.95), lr 1.5e-4 × N/256, wd 0.05, warm-up then cosine

The encoder is ``config.model.encoder`` (a ViT with fixed 2-D sin-cos positions and a cls
token), so its params sit under ``params["encoder"]`` with the names of
``make_encoder(config.model.encoder)`` and a fine-tuning run can load them. Masks are drawn
in ``prepare`` (``jssl.masking.random_patch_mask``, MAE's ``random_masking``); the model is
``jssl.models.mae.MAE``, the loss ``jssl.losses.mae``.

Features for evaluation: the encoder on ALL patches (no mask), the mean of the patch tokens
after the final LayerNorm (cls token excluded). MAE's linear probe reads the cls token through
a BatchNorm; its fine-tuning uses this global average pool.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import ViewParams, make_views
from jssl.masking import random_patch_mask
from jssl.methods.base import Method
from jssl.models.encoders import make_encoder
from jssl.models.mae import MAE as MAEModel
from jssl.models.vit import ViT


class MAE(Method):
    name = "mae"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.encoder = make_encoder(config.model.encoder)
        if not isinstance(self.encoder, ViT):
            raise ValueError(f"config.model.encoder.name={config.model.encoder.name!r}: MAE "
                             "needs a ViT encoder; set config.model.encoder.name='vit'")
        if self.encoder.pos_embed != "sincos" or not self.encoder.use_cls:
            raise ValueError(f"config.model.encoder: pos_embed={self.encoder.pos_embed!r}, "
                             f"use_cls={self.encoder.use_cls}; MAE's encoder has fixed sin-cos "
                             "positions and a cls token: set pos_embed='sincos', use_cls=True")
        self.mask_ratio = float(config.method_params.mask_ratio)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"config.method_params.mask_ratio={self.mask_ratio} must be in "
                             "(0, 1); MAE uses 0.75")
        self.decoder = config.model.decoder
        self.norm_pix = bool(config.loss.norm_pix)
        aug = config.augment
        self.out_size = aug.size
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.5),
                               jitter_p=0.0, grayscale_p=0.0)

    def model(self, channels: int) -> MAEModel:
        """The MAE network for images with ``channels`` channels (the pixel head's width)."""
        e = self.encoder
        return MAEModel(patch_size=e.patch_size, dim=e.dim, depth=e.depth,
                        num_heads=e.num_heads, mlp_ratio=e.mlp_ratio,
                        decoder_dim=self.decoder.dim, decoder_depth=self.decoder.depth,
                        decoder_heads=self.decoder.num_heads, mask_ratio=self.mask_ratio,
                        drop_path_rate=e.drop_path_rate, channels=channels, dtype=e.dtype,
                        attention=e.attention)

    @property
    def num_patches(self) -> int:
        return (self.out_size // self.encoder.patch_size) ** 2

    def init(self, key, batch):
        x = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        k_params, k_mask = jax.random.split(key)
        variables = self.model(x.shape[-1]).init({"params": k_params, "masking": k_mask}, x)
        return dict(variables), {}

    def prepare(self, batch, key):
        view_key, mask_key = jax.random.split(key)
        (views,) = make_views(view_key, self.images(batch), [(self.view, self.out_size)])
        _, ids_keep, ids_restore = random_patch_mask(mask_key, self.num_patches,
                                                     self.mask_ratio, views.shape[0])
        return {"views": views, "ids_keep": ids_keep, "ids_restore": ids_restore}

    def loss(self, params, variables, extra, batch, key, step):
        x = batch["views"]
        out = self.model(x.shape[-1]).apply(
            {**variables, "params": params}, x, ids_keep=batch["ids_keep"],
            ids_restore=batch["ids_restore"], train=True, rngs={"dropout": key})
        loss = losses.mae(out.pred, out.target, out.mask, norm_pix=self.norm_pix)
        return loss, ({"mask_fraction": jnp.mean(out.mask)}, variables)

    def features(self, variables, extra, images):
        n = (images.shape[1] // self.encoder.patch_size) * (images.shape[2] //
                                                          self.encoder.patch_size)
        every = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (images.shape[0], n))
        tokens = self.model(images.shape[-1]).apply(variables, images, every,
                                                    method=MAEModel.encode)
        return jnp.mean(tokens[:, 1:].astype(jnp.float32), axis=1)
