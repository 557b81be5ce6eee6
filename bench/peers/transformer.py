"""The transformer block of ``jssl.models.transformer`` in PyTorch (BERT and CLIP's text tower).

``TransformerBlock`` with ``use_bias=True``, LayerNorm, un-gated MLP, no activation dropout:
pre-norm ``x + Drop(f(LN(x)))`` or post-norm ``LN(x + Drop(f(x)))`` for f = MHSA, then f =
dense → exact GELU (or tanh GELU) → dense. Attention: softmax(q·kᵀ/√d_h) with boolean masks
(True = attend), dropout on the probabilities. The q/k/v biases are one [3, H, d_h] tensor, so
they have ndim > 1 and get weight decay, as jssl's ``DenseGeneral`` biases [H, d_h] do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """jssl ``MultiHeadAttention`` (self-attention): fused q/k/v kernel, output projection."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Parameter(torch.empty(3 * dim, dim))
        self.qkv_bias = nn.Parameter(torch.zeros(3, heads, dim // heads))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.qkv, self.qkv_bias.flatten()).view(b, n, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """jssl ``TransformerBlock``: self-attention and MLP sublayers, pre- or post-norm."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, pre_norm: bool, eps: float,
                 dropout: float = 0.0, attention_dropout: float = 0.0,
                 activation: str = "gelu"):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = Attention(dim, heads, attention_dropout)
        gelu = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), gelu, nn.Linear(mlp_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), mask))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


def normal_init(module: nn.Module, std: float) -> None:
    """jssl's N(0, std) kernels and embeddings, zero biases (LayerNorms stay 1 / 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, Attention):
            nn.init.normal_(m.qkv, std=std)
