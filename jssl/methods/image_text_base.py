"""What CLIP and SigLIP share: the two towers, the paired inputs and the evaluation.

    image tower  f: the config's encoder (tiny ResNet for Fashion-MNIST, ViT-B/16 at scale)
    text tower   g: token embedding + learned positions + a pre-norm causal transformer,
                 pooled at the [EOS] token (CLIP §2.4: "the activations of the highest layer
                 of the transformer at the [EOS] token")
    x = normalise(W_i f(image)),  y = normalise(W_t g(caption))     (``TwoTower``)

``prepare`` makes, without gradient, one view per image (random resized crop + flip; CLIP
uses only a random square crop) and its caption: the batch's own ``tokens`` when the data
provides them, else ``table[label, k]`` with one template/synonym ``k`` drawn uniformly per
example and step from the fixed caption table of ``jssl.data.captions`` (no text pipeline).
The subclasses add only the loss, over the whole global batch through ``self.shard``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jssl.augment.recipes import ViewParams, make_views
from jssl.data import captions
from jssl.methods.base import Method
from jssl.models.encoders import _fields, make_encoder
from jssl.models.transformer import (
    BlockConfig,
    TokenEmbedding,
    TransformerStack,
    combine_masks,
    make_causal_mask,
    make_padding_mask,
)
from jssl.models.two_tower import MAX_LOGIT_SCALE, two_tower


class TextEncoder(nn.Module):
    """Token ids ``[B, L]`` (0 = padding, [EOS] last) -> features ``[B, dim]`` at [EOS]."""

    vocab_size: int
    max_len: int
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens of shape {tokens.shape}: expected [B, L] with "
                             f"L <= max_len={self.max_len}")
        valid = tokens != captions.PAD
        x = TokenEmbedding(self.vocab_size, self.dim, dtype=self.dtype, name="embed")(tokens)
        pos = self.param("pos_embed", nn.initializers.normal(0.01), (self.max_len, self.dim))
        x = x + pos[: tokens.shape[1]].astype(self.dtype)
        cfg = BlockConfig(dim=self.dim, num_heads=self.num_heads,
                          mlp_dim=int(self.dim * self.mlp_ratio), dtype=self.dtype)
        mask = combine_masks(make_padding_mask(valid), make_causal_mask(tokens.shape[1]))
        x = TransformerStack(cfg, self.depth, name="transformer")(
            x, mask=mask, deterministic=deterministic)
        eos = jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)  # right-padded: [EOS] is last valid
        return jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


class ImageTextMethod(Method):
    """Two-tower base; subclasses set ``kind`` ("clip" | "siglip") and ``loss``."""

    kind = "clip"
    uses_batch_negatives = True

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        cap = config.captions
        self.class_names = captions.class_names(cap.classes)
        self.vocab = captions.build_vocabulary(self.class_names)
        self.max_len = cap.max_len
        self.table = captions.caption_table(
            self.vocab, captions.class_captions(self.class_names, captions.TRAIN_TEMPLATES),
            self.max_len)
        text_cfg = _fields(config.model.text)  # dtype names -> dtypes
        vocab_size = max(text_cfg.pop("vocab_size", 0), self.vocab.size)
        text = TextEncoder(vocab_size=vocab_size, max_len=self.max_len, **text_cfg)
        self.net = two_tower(self.kind, make_encoder(config.model.encoder), text,
                             embed_dim=config.model.embed_dim,
                             max_logit_scale=config.model.get("max_logit_scale",
                                                              MAX_LOGIT_SCALE))
        aug = config.augment
        self.out_size = aug.size
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.5),
                               jitter_p=0.0, grayscale_p=0.0)
        lc = config.loss
        self.loss_kwargs = dict(impl=lc.get("impl", "gather"),
                                block_size=lc.get("block_size", 1024))

    def init(self, key, batch):
        images = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        tokens = jnp.zeros((2, self.max_len), jnp.int32).at[:, :2].set(
            jnp.array([captions.BOS, captions.EOS]))
        return dict(self.net.init(key, images, tokens, train=True)), {}

    def prepare(self, batch, key):
        view_key, caption_key = jax.random.split(key)
        (views,) = make_views(view_key, self.images(batch), [(self.view, self.out_size)])
        if "tokens" in batch:  # a captioned dataset brings its own tokenised text
            return {"views": views, "tokens": batch["tokens"]}
        k = jax.random.randint(caption_key, batch["label"].shape, 0, self.table.shape[1])
        return {"views": views, "tokens": jnp.asarray(self.table)[batch["label"], k]}

    def embed(self, params, variables, batch):
        """((x, y, t, b), new batch_stats) of the prepared batch, in training mode."""
        return self.net.apply({**variables, "params": params}, batch["views"], batch["tokens"],
                              train=True, mutable=["batch_stats"])

    @staticmethod
    def metrics(x: jax.Array, y: jax.Array, scale: jax.Array) -> dict[str, jax.Array]:
        """The temperature t, the mean positive cosine (1/N) Σ_i x_i·y_i and the mean over
        all N² pairs (1/N²) Σ_ij x_i·y_j = mean(x)·mean(y) (no [N, N] matrix)."""
        return {"logit_scale": scale, "pos_cos": jnp.mean(jnp.sum(x * y, -1)),
                "mean_cos": jnp.dot(jnp.mean(x, 0), jnp.mean(y, 0))}

    def features(self, variables, extra, images):
        """The normalised image embeddings (what zero-shot and retrieval compare)."""
        return self.net.apply(variables, images, method=self.net.encode_image)

    def text_features(self, variables, tokens: np.ndarray) -> np.ndarray:
        """Normalised text embeddings [N, E] of token rows [N, L] (small N: one call)."""
        if not hasattr(self, "_encode_text"):  # one jitted function: compiled once per shape
            self._encode_text = jax.jit(
                lambda v, t: self.net.apply(v, t, method=self.net.encode_text))
        return np.asarray(jax.device_get(self._encode_text(variables, jnp.asarray(tokens))))

    def evaluate(self, state, workdir: Path) -> tuple[list[dict], int]:
        from jssl.evaluate.zero_shot import evaluate_image_text

        return evaluate_image_text(self, state, workdir)
