"""I-JEPA (Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture"): predict, in representation space, the target blocks of an image
from one context block. No pixels are reconstructed and no augmented views are made.

    context encoder f_θ (ViT, no cls token), target encoder f_ξ (EMA of f_θ), predictor g_φ
    for a minibatch x of N images:
        x     = random resized crop (scale 0.3–1; I-JEPA's code, no other augmentation)
        masks: M = 4 target blocks B_1..B_M (scale 0.15–0.2, aspect 0.75–1.5) and one context
               block C (scale 0.85–1, aspect 1) without the target patches   (``prepare``)
        s_y   = LayerNorm(f_ξ(x))                 every patch, no gradient (parameter-free LN)
        s_x   = f_θ(x restricted to C)             context tokens only
        ŝ_m   = g_φ(s_x, positions of B_m)         predicted target-block tokens
        loss  = mean over m, target patches i of B_m, channels of smooth-L1(ŝ_mi − s_y,i)
        θ, φ ← AdamW(∇ loss)   (lr 1e-3 warm-up + cosine, wd 0.04 → 0.4 cosine)
        ξ ← τ·ξ + (1 − τ)·θ,   τ linear 0.996 → 1 over training

Static shapes: blocks live in fixed slot grids with validity flags
(``jssl.masking.multiblock``); invalid context slots are masked out of every attention
(``ViT(keep_valid=...)``), invalid target slots out of the predictor's attention and the
loss. The loss is the mean over valid elements of the global batch (a ratio of sums, so it
does not depend on the device count). The paper writes an L2 distance; its code
(``src/train.py``) uses ``smooth_l1_loss``, as here.

Features for evaluation: the context encoder on all patches, mean over the patch tokens
(I-JEPA's linear probe reads the average-pooled last layer).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.augment.recipes import ViewParams, make_views
from jssl.masking.multiblock import multiblock_masks
from jssl.methods.base import Method
from jssl.methods.ema import ema_update
from jssl.models.encoders import make_encoder
from jssl.models.ijepa import Predictor
from jssl.models.vit import ViT


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """Elementwise Huber/smooth-L1 (PyTorch ``smooth_l1_loss``, reduction none)."""
    a = jnp.abs(x)
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def linear_tau(step: jax.Array, total_steps: int, base: float, end: float = 1.0) -> jax.Array:
    """I-JEPA's momentum schedule: linear from ``base`` at step 0 to ``end`` at the last."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return jnp.float32(base) + jnp.float32(end - base) * progress


class IJEPA(Method):
    name = "ijepa"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.encoder = make_encoder(config.model.encoder)
        if not isinstance(self.encoder, ViT) or self.encoder.use_cls or \
                self.encoder.pool != "none":
            raise ValueError("config.model.encoder must be a ViT with use_cls=False and "
                             "pool='none' (I-JEPA predicts patch tokens; set name='vit', "
                             "use_cls=False, pool='none')")
        aug = config.augment
        self.size = int(aug.size)
        p = self.encoder.patch_size
        if self.size % p:
            raise ValueError(f"config.augment.size={self.size} is not divisible by the "
                             f"patch_size={p}; use a multiple of {p}")
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.0),
                               jitter_p=0.0, grayscale_p=0.0)
        self.grid = (self.size // p, self.size // p)
        pc = config.model.predictor
        self.predictor = Predictor(self.grid, dim=pc.dim, depth=pc.depth,
                                   num_heads=pc.num_heads, out_dim=self.encoder.dim,
                                   dtype=self.encoder.dtype)
        mp = config.method_params
        self.masks = dict(num_targets=int(mp.num_targets),
                          target_scale=tuple(mp.target_scale),
                          target_aspect=tuple(mp.target_aspect),
                          context_scale=tuple(mp.context_scale))
        self.tau_base = float(mp.tau_base)
        if not 0.0 <= self.tau_base <= 1.0:
            raise ValueError(f"config.method_params.tau_base={self.tau_base} must be in "
                             f"[0, 1]; I-JEPA uses 0.996")
        self.total_steps = int(config.train.steps)

    def init(self, key, batch):
        k_enc, k_pred = jax.random.split(key)
        x = jnp.zeros((2, self.size, self.size, self.channels(batch)))
        enc = self.encoder.init(k_enc, x)["params"]
        m = multiblock_masks(jax.random.key(0), self.grid, 2, **self.masks)
        ctx = jnp.zeros((2, m["context_ids"].shape[1], self.encoder.dim))
        pred = self.predictor.init(k_pred, ctx, m["context_ids"], m["context_valid"],
                                   m["target_ids"], m["target_valid"])["params"]
        params = {"encoder": enc, "predictor": pred}
        return {"params": params}, {"target": jax.tree.map(jnp.asarray, enc)}

    @staticmethod
    def channels(batch) -> int:
        return int(batch["image"].shape[-1]) if "image" in batch else 1

    def prepare(self, batch, key):
        view_key, mask_key = jax.random.split(key)
        (images,) = make_views(view_key, self.images(batch), [(self.view, self.size)])
        return {"images": images,
                **multiblock_masks(mask_key, self.grid, images.shape[0], **self.masks)}

    def loss(self, params, variables, extra, batch, key, step):
        x = batch["images"]
        s_y = self.encoder.apply({"params": extra["target"]}, x)          # [B, N, D]
        s_y = jax.lax.stop_gradient(_layer_norm(s_y.astype(jnp.float32)))
        targets = jax.vmap(lambda s, ids: s[ids])(s_y, batch["target_ids"])  # [B, M, Kt, D]
        s_x = self.encoder.apply({"params": params["encoder"]}, x,
                                 keep_ids=batch["context_ids"],
                                 keep_valid=batch["context_valid"])
        pred = self.predictor.apply({"params": params["predictor"]}, s_x,
                                    batch["context_ids"], batch["context_valid"],
                                    batch["target_ids"], batch["target_valid"])
        w = batch["target_valid"].astype(jnp.float32)[..., None]
        count = jnp.sum(w) * pred.shape[-1]
        loss = jnp.sum(smooth_l1(pred - targets) * w) / jnp.maximum(count, 1.0)
        metrics = {"tau": linear_tau(step, self.total_steps, self.tau_base),
                   "context_fraction": jnp.mean(batch["context_valid"].astype(jnp.float32)),
                   "target_std": jnp.mean(jnp.std(s_y, axis=(0, 1)))}
        return loss, (metrics, variables)

    def update_extra(self, params, extra, step):
        """ξ ← τ_k·ξ + (1 − τ_k)·θ for the encoder (k = the step just taken)."""
        tau = linear_tau(step, self.total_steps, self.tau_base)
        return {**extra, "target": ema_update(extra["target"], params["encoder"], tau)}

    def features(self, variables, extra, images):
        tokens = self.encoder.apply({"params": variables["params"]["encoder"]}, images)
        return jnp.mean(tokens.astype(jnp.float32), axis=1)


def _layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Parameter-free LayerNorm over the last axis (I-JEPA normalises the targets this way)."""
    return nn.LayerNorm(epsilon=eps, use_scale=False, use_bias=False).apply({}, x)
