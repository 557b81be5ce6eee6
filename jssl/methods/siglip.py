"""SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"), Algorithm 1:

    zimg = l2_normalize(img_emb),  ztxt = l2_normalize(txt_emb)
    logits = zimg · ztxtᵀ · t + b            (t = exp(t'), t' init ln 10; b init -10)
    labels = 2·eye(N) - 1                     (+1 on the diagonal, -1 elsewhere)
    loss = -Σ log_sigmoid(labels · logits) / N

Every pair of the global batch is a binary problem: ``losses.siglip`` runs under
``self.shard`` and all-gathers the texts (``config.loss.impl="gather"``) or passes them
around the ring of SigLIP §3.3 (``"ring"``). The scale is clamped at 100 like CLIP's
(``TwoTower``). Towers, views and captions: ``jssl.methods.image_text_base``.
"""
from __future__ import annotations

from typing import Any

import jax

from jssl import losses
from jssl.methods.image_text_base import ImageTextMethod


class SigLIP(ImageTextMethod):
    name = "siglip"
    kind = "siglip"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.siglip_loss = self.shard(losses.siglip, (0, 1), **self.loss_kwargs)

    def loss(self, params, variables, extra, batch, key, step):
        (x, y, scale, bias), new_vars = self.embed(params, variables, batch)
        loss = self.siglip_loss(x, y, scale, bias)
        metrics = {**self.metrics(x, y, scale), "logit_bias": bias}
        return loss, (metrics, dict(new_vars))
