"""PyTorch peer of jssl's CLIP update (``jssl.methods.clip``, ``image_text_base``, ``two_tower``).

Mirrored: the image tower is jssl's CIFAR-stem ResNet (train-mode BatchNorm) → bias-free
linear projection; the text tower (``TextEncoder``) is token embedding (N(0, 0.02)) + learned
positions (N(0, 0.01)), pre-norm blocks (LayerNorm 1e-5, exact GELU, MLP ratio
``mlp_ratio``, no dropout) under a causal + key-padding mask, a final LayerNorm, pooled at
[EOS] (the last non-padding token) → bias-free projection; both embeddings L2-normalised;
t = exp(min(logit_scale, ln 100)), logit_scale initialised to ln(1/0.07); the symmetric
InfoNCE ½[CE(t·x·yᵀ, i) + CE(t·y·xᵀ, j)] over the batch; AdamW (decay on ndim > 1 params, so
not on the logit scale). The vocabulary is jssl's caption vocabulary. Not mirrored: jssl's
padding mask also blanks padded *query* rows; here they attend to the real tokens before
them, which changes only hidden states at padding, never the [EOS] features or the loss.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.peers.common import adamw, num_params, resnet_from_config
from bench.peers.transformer import Block, normal_init
from jssl.data import captions
from jssl.models.two_tower import CLIP_LOGIT_SCALE_INIT, MAX_LOGIT_SCALE


class TextEncoder(nn.Module):
    """jssl ``TextEncoder``: token ids [B, L] (0 = padding, [EOS] last) → [B, dim] at [EOS]."""

    def __init__(self, vocab: int, max_len: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.01)
        self.blocks = nn.ModuleList(Block(dim, heads, int(dim * mlp_ratio), pre_norm=True,
                                          eps=1e-5) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        normal_init(self, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        valid = tokens != captions.PAD
        n = tokens.shape[1]
        mask = valid[:, None, None, :] & torch.ones(n, n, dtype=torch.bool).tril()
        x = self.embed(tokens) + self.pos[:n]
        for block in self.blocks:
            x = block(x, mask)
        eos = (valid.sum(1) - 1).clamp_min(0)
        return self.norm(x)[torch.arange(x.shape[0]), eos]


class CLIP(nn.Module):
    """jssl ``TwoTower`` (kind "clip"): projections, normalisation, clamped temperature."""

    def __init__(self, config: Any, channels: int, vocab: int, max_len: int):
        super().__init__()
        t, e = config.model.text, config.model.embed_dim
        self.image = resnet_from_config(config.model.encoder, channels)
        self.text = TextEncoder(vocab, max_len, t.dim, t.depth, t.num_heads, t.mlp_ratio)
        self.image_proj = nn.Linear(self.image.num_features, e, bias=False)
        self.text_proj = nn.Linear(t.dim, e, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(CLIP_LOGIT_SCALE_INIT))
        self.max_logit_scale = float(config.model.get("max_logit_scale", MAX_LOGIT_SCALE))

    def forward(self, views: torch.Tensor, tokens: torch.Tensor):
        x = F.normalize(self.image_proj(self.image(views)), dim=-1)
        y = F.normalize(self.text_proj(self.text(tokens)), dim=-1)
        return x, y, self.logit_scale.clamp(max=self.max_logit_scale).exp()


def clip_loss(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """½ (mean_i CE(L_i·, i) + mean_j CE(L_·j, j)), L = t · x yᵀ (jssl ``losses.clip``)."""
    logits = scale * x @ y.T
    target = torch.arange(x.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def torch_inputs(inputs: dict, torch_mod) -> dict:
    """``ImageTextMethod.prepare``'s arrays: views NHWC → NCHW float32, token ids int64."""
    return {"views": torch_mod.from_numpy(np.array(inputs["views"], np.float32))
            .permute(0, 3, 1, 2).contiguous(),
            "tokens": torch_mod.from_numpy(np.array(inputs["tokens"], np.int64))}


def make_step(config: Any, inputs: dict) -> Callable[[], torch.Tensor]:
    """One CLIP update on the prepared ``views`` [N, C, H, W] and caption ``tokens`` [N, L]."""
    views, tokens = inputs["views"], inputs["tokens"]
    cap = config.captions
    vocab = max(int(config.model.text.get("vocab_size", 0)),
                captions.build_vocabulary(captions.class_names(cap.classes)).size)
    model = CLIP(config, views.shape[1], vocab, cap.max_len)
    params = list(model.parameters())
    opt = adamw(params, config.optim, views.shape[0])

    def step() -> torch.Tensor:
        loss = clip_loss(*model(views, tokens))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step.num_params = num_params(params)
    return step
