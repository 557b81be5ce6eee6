"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"), Algorithm 1:

    for a minibatch x of N images:
        two augmented views of every image      (random crop, flip, colour jitter, grayscale, blur)
        h = f(view), z = g(h)                   (encoder f, projection MLP g)
        loss = NT-Xent(z1, z2; T)               (2N anchors, negatives from the whole global batch)
    optimiser: LARS, lr = 0.3 × batch / 256, linear warm-up then cosine, weight decay 1e-6

Views are made on the accelerator inside the jitted step, one key per example.
Negatives are all-gathered across every device (``impl="gather"``) or passed
around the ring (``impl="ring"``); BatchNorm statistics are global.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import SimCLRParams, simclr_views
from jssl.methods.base import Method
from jssl.models.encoders import make_encoder
from jssl.models.heads import ProjectionMLP


class EncoderProjector(nn.Module):
    """h = f(x), z = g(h); returns (h, z)."""

    encoder: nn.Module
    projector: nn.Module

    def __call__(self, x: jax.Array, *, train: bool = True) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(x, train=train)
        return h, self.projector(h, train=train)


def projection_mlp(cfg: Any) -> ProjectionMLP:
    return ProjectionMLP(hidden_dim=cfg.hidden_dim, out_dim=cfg.out_dim,
                         num_layers=cfg.num_layers, use_bn=cfg.get("use_bn", True),
                         last_bn=cfg.get("last_bn", False))


class SimCLR(Method):
    name = "simclr"
    uses_batch_negatives = True

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.net = EncoderProjector(make_encoder(config.model.encoder),
                                    projection_mlp(config.model.projector))
        aug = config.augment
        self.view_params = SimCLRParams(strength=aug.strength, blur=aug.blur,
                                        scale=tuple(aug.scale))
        self.out_size = aug.size
        self.nt_xent = self.shard(losses.nt_xent, (0, 1), temperature=config.loss.temperature,
                                  impl=config.loss.get("impl", "gather"),
                                  block_size=config.loss.get("block_size", 1024))

    def init(self, key, batch):
        views = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        return dict(self.net.init(key, views, train=True)), {}

    def prepare(self, batch, key):
        v1, v2 = simclr_views(key, self.images(batch), self.out_size, params=self.view_params)
        return {"views": jnp.concatenate([v1, v2])}

    def loss(self, params, variables, extra, batch, key, step):
        (_, z), new_vars = self.net.apply({**variables, "params": params}, batch["views"],
                                          train=True, mutable=["batch_stats"])
        z1, z2 = jnp.split(z, 2)
        loss = self.nt_xent(z1, z2)
        return loss, ({"z_std": jnp.mean(jnp.std(z1, axis=0))}, dict(new_vars))

    def features(self, variables, extra, images):
        h, _ = self.net.apply(variables, images, train=False)
        return h
