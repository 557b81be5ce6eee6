"""BEiT (Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers"): masked image
modelling with discrete visual tokens.

    tokenizer q (frozen): image → one visual-token id per patch          (trained beforehand)
    for a minibatch x of N images:
        x   = random resized crop + flip
        z   = q(x)                                     target ids [N, P], no gradient
        M   = blockwise mask of ~40 % of the P patches (BEiT's MaskingGenerator)
        h   = ViT(patch embeddings with e_[M] in place of masked patches, + positions)
        loss = mean over masked patches i of CE(softmax(W h_i + b), z_i)
    optimiser: AdamW β (0.9, 0.999), wd 0.05, warm-up then cosine

The tokenizer is a VQ-VAE trained by ``experiments/vqvae.py`` (the paper uses DALL-E's
dVAE, which cannot be downloaded here): its params are read from the newest checkpoint of
``config.tokenizer.workdir`` when the method is built and kept frozen in ``extra``, so
no gradient or optimizer touches them. Deviation: the tokenizer sees the same image and
patch size as the ViT (BEiT feeds a 112 px copy to an 8× dVAE). Masks: ``jssl.masking.
block_mask`` (BEiT's generator). Features for evaluation: the encoder on all patches, mean
of the patch tokens.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jssl.augment.recipes import ViewParams, make_views
from jssl.losses.prediction import argmax_equals
from jssl.masking import block_mask
from jssl.methods.base import Method
from jssl.methods.vqvae import make_tokenizer
from jssl.models.encoders import make_encoder
from jssl.models.vit import ViT
from jssl.models.vq_tokenizer import VQTokenizer

TRAIN_TOKENIZER = ("python -m jssl.main --config=experiments/vqvae.py:fashion_mnist "
                   "--workdir=runs/vqvae_fashion_mnist")


def check_tokenizer_config(workdir: str, tokenizer_config: Any) -> None:
    """Raise unless the tokenizer run in ``workdir`` was trained with ``tokenizer_config``
    (``config.model.tokenizer``): settings such as ``l2_normalize`` change the ids without
    changing any parameter shape."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return  # a bare checkpoint directory: only the shapes are checked
    with open(path) as f:
        saved = json.load(f).get("model", {}).get("tokenizer")
    wanted = tokenizer_config.to_dict()
    if saved is not None and saved != wanted:
        raise ValueError(f"config.model.tokenizer={wanted} differs from the tokenizer run's "
                         f"{saved} ({path}); set config.model.tokenizer to the run's or "
                         f"retrain the tokenizer with this one")


def load_tokenizer_params(workdir: str) -> Any:
    """``params["encoder"]`` (the VQ tokenizer) of the newest checkpoint in ``workdir``."""
    from jssl.train.pretrained import restore_run, saved_params

    restored = restore_run(workdir, "config.tokenizer.workdir",
                           f"train a tokenizer first: {TRAIN_TOKENIZER}")
    return jax.tree.map(np.asarray, jax.device_get(saved_params(restored)["encoder"]))


class BEiT(Method):
    name = "beit"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.encoder = make_encoder(config.model.encoder)
        if not isinstance(self.encoder, ViT) or not self.encoder.use_cls or \
                self.encoder.pool != "none":
            raise ValueError("config.model.encoder must be a ViT with use_cls=True and "
                             "pool='none' (BEiT classifies every patch token)")
        aug = config.augment
        self.size, self.channels = int(aug.size), int(config.data.get("channels", 1))
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.5),
                               jitter_p=0.0, grayscale_p=0.0)
        self.tokenizer = make_tokenizer(config.model.tokenizer, self.channels)
        if self.tokenizer.patch_size != self.encoder.patch_size:
            raise ValueError(f"config.model.tokenizer.patch_size={self.tokenizer.patch_size} "
                             f"must equal the ViT's patch_size={self.encoder.patch_size} (one "
                             f"visual token per patch)")
        self.grid = (self.size // self.encoder.patch_size,) * 2
        mp = config.method_params
        self.num_masked = round(float(mp.mask_ratio) * self.grid[0] * self.grid[1])
        self.min_block = int(mp.min_block)
        tok = config.tokenizer
        self.tokenizer_params = None
        if tok.get("workdir"):
            check_tokenizer_config(str(tok.workdir), config.model.tokenizer)
            self.tokenizer_params = load_tokenizer_params(str(tok.workdir))
        elif not tok.get("untrained_ok", False):
            raise ValueError(f"config.tokenizer.workdir is unset: BEiT predicts the ids of a "
                             f"trained tokenizer; train one ({TRAIN_TOKENIZER}) and pass "
                             f"--config.tokenizer.workdir=runs/vqvae_fashion_mnist")
        self.head = nn.Dense(self.tokenizer.codebook_size, name="head")

    def init(self, key, batch):
        k_enc, k_head, k_tok = jax.random.split(key, 3)
        x = jnp.zeros((2, self.size, self.size, self.channels))
        mask = jnp.zeros((2, self.grid[0] * self.grid[1]), bool)
        enc = self.encoder.init(k_enc, x, mask=mask)["params"]
        head = self.head.init(k_head, jnp.zeros((1, self.encoder.dim)))["params"]
        tok = self.tokenizer_params
        if tok is None:  # untrained_ok (tests): a random tokenizer, same shapes
            tok = self.tokenizer.init(k_tok, x)["params"]
        tok = jax.tree.map(jnp.asarray, tok)
        return {"params": {"encoder": enc, "head": head}}, {"tokenizer": tok}

    def prepare(self, batch, key):
        view_key, mask_key = jax.random.split(key)
        (views,) = make_views(view_key, self.images(batch), [(self.view, self.size)])
        mask = block_mask(mask_key, self.grid, self.num_masked, min_block=self.min_block,
                          batch_size=views.shape[0])
        return {"views": views, "mask": mask.reshape(views.shape[0], -1)}

    def targets(self, extra: Any, views: jax.Array) -> jax.Array:
        """The frozen tokenizer's ids ``[B, P]`` of ``views``."""
        ids = self.tokenizer.apply({"params": extra["tokenizer"]}, views,
                                   method=VQTokenizer.encode)
        return jax.lax.stop_gradient(ids.reshape(views.shape[0], -1))

    def loss(self, params, variables, extra, batch, key, step):
        x, mask = batch["views"], batch["mask"]
        ids = self.targets(extra, x)
        tokens = self.encoder.apply({"params": params["encoder"]}, x, mask=mask, train=True,
                                    rngs={"dropout": key})
        logits = self.head.apply({"params": params["head"]}, tokens[:, 1:]).astype(jnp.float32)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], axis=-1)[..., 0]
        w = mask.astype(jnp.float32)
        loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
        hit = argmax_equals(logits, ids).astype(jnp.float32)
        metrics = {"mask_fraction": jnp.mean(w),
                   "token_accuracy": jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)}
        return loss, (metrics, variables)

    def features(self, variables, extra, images):
        tokens = self.encoder.apply({"params": variables["params"]["encoder"]}, images)
        return jnp.mean(tokens[:, 1:].astype(jnp.float32), axis=1)
