"""VQ-VAE visual tokenizer (van den Oord et al. 2017), the first stage of BEiT.

    for a minibatch x of N images:
        z   = E(x)                              conv encoder, one vector per p × p patch
        e   = nearest codebook entry of each z  (ids = BEiT's visual tokens)
        x̂   = D(z + sg(e − z))                  straight-through decoder input
        loss = mean((x̂ − x)²) + ‖sg(z) − e‖² + β‖z − sg(e)‖²     (β = 0.25)

BEiT (``jssl.methods.beit``) reads this run's ``params["encoder"]`` (the tokenizer) from its
newest checkpoint (``config.tokenizer.workdir``); the paper uses DALL-E's pretrained dVAE,
which cannot be downloaded here. The model is ``jssl.models.vq_tokenizer.VQTokenizer``,
the loss ``vq_vae_loss``. Features for the (optional) probes: the mean over patches of the
quantised code vectors.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jssl.methods.base import Method
from jssl.models.vq_tokenizer import VQTokenizer, vq_tokenizer, vq_vae_loss


def make_tokenizer(cfg: Any, channels: int) -> VQTokenizer:
    """The tokenizer of ``config.model.tokenizer`` (preset + overrides) for ``channels``."""
    fields = {k: v for k, v in cfg.to_dict().items() if k != "preset"}
    return vq_tokenizer(cfg.preset, channels=channels, **fields)


class VQVAE(Method):
    name = "vqvae"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.channels = int(config.data.get("channels", 1))
        self.model = make_tokenizer(config.model.tokenizer, self.channels)
        self.size = int(config.data.get("image_size", 28))

    def init(self, key, batch):
        x = jnp.zeros((2, self.size, self.size, self.channels))
        return {"params": {"encoder": self.model.init(key, x)["params"]}}, {}

    def prepare(self, batch, key):
        return {"images": self.images(batch)}

    def loss(self, params, variables, extra, batch, key, step):
        loss, metrics = vq_vae_loss(params["encoder"], batch["images"], model=self.model)
        return loss, (metrics, variables)

    def features(self, variables, extra, images):
        ids = self.model.apply({"params": variables["params"]["encoder"]}, images,
                               method=VQTokenizer.encode)
        table = self.model.apply({"params": variables["params"]["encoder"]},
                                 method=VQTokenizer.codes)
        codes = table[ids]  # [B, h, w, code_dim]
        return jnp.mean(codes.reshape(codes.shape[0], -1, codes.shape[-1]), axis=1)
