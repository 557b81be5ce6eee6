"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"), Figure 3:

    I_e = l2_normalize(I_f · W_i),  T_e = l2_normalize(T_f · W_t)     (image / text towers)
    logits = I_e · T_eᵀ · exp(t)                                      (t learned, init ln(1/0.07))
    loss = (CE(logits, arange(N), axis=0) + CE(logits, arange(N), axis=1)) / 2

The N pairs are the whole global batch: ``losses.clip`` runs under ``self.shard`` and
all-gathers the other tower (``config.loss.impl="gather"``) or passes it around the ring
(``"ring"``). The temperature is clamped at 100 (``t <= ln 100``, §2.5) on the forward pass
(``TwoTower``). Towers, views and captions: ``jssl.methods.image_text_base``.
"""
from __future__ import annotations

from typing import Any

import jax

from jssl import losses
from jssl.methods.image_text_base import ImageTextMethod


class CLIP(ImageTextMethod):
    name = "clip"
    kind = "clip"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.clip_loss = self.shard(losses.clip, (0, 1), **self.loss_kwargs)

    def loss(self, params, variables, extra, batch, key, step):
        (x, y, scale, _), new_vars = self.embed(params, variables, batch)
        loss = self.clip_loss(x, y, scale)
        return loss, (self.metrics(x, y, scale), dict(new_vars))
