"""PyTorch peer of jssl's BERT update (``jssl.methods.bert``, ``jssl.models.bert``).

Mirrored: token + learned position + segment embeddings, LayerNorm(1e-12), dropout; post-norm
blocks (LayerNorm 1e-12, exact GELU, hidden and attention-probability dropout at jssl's rates,
key-padding mask); pooler dense → tanh on [CLS] and the NSP dense; the MLM head dense → exact
GELU → LayerNorm, logits tied to the token embedding + an output bias, computed only at the
first ``masking.max_predictions`` masked positions of each row (stable argsort of −weights, as
``BERT.predicted``); loss Σ w·CE / Σ w + ``nsp_weight`` · mean CE(NSP); global-norm clipping,
then AdamW (decay on ndim > 1 params). N(0, 0.02) init as jssl. The sizes are read from the
same flax ``BERT`` module jssl builds, so they cannot drift. Not mirrored: jssl's padding mask
also blanks padded *query* rows; here padded queries attend to the real tokens, which changes
only the hidden states at padding, never the loss.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.peers.common import adamw, num_params
from bench.peers.transformer import Block, normal_init
from jssl.data.fortunes import PAD


class BERT(nn.Module):
    def __init__(self, m: Any):
        super().__init__()
        d = m.hidden_dim
        self.tok = nn.Embedding(m.vocab_size, d)
        self.pos = nn.Parameter(torch.randn(m.max_len, d) * m.init_std)
        self.seg = nn.Embedding(m.type_vocab_size, d) if m.type_vocab_size > 0 else None
        self.norm, self.drop = nn.LayerNorm(d, eps=1e-12), nn.Dropout(m.dropout_rate)
        self.blocks = nn.ModuleList(
            Block(d, m.num_heads, m.mlp_dim, pre_norm=False, eps=1e-12, dropout=m.dropout_rate,
                  attention_dropout=m.attention_dropout_rate) for _ in range(m.num_layers))
        self.pooler, self.mlm_dense = nn.Linear(d, d), nn.Linear(d, d)
        self.mlm_norm = nn.LayerNorm(d, eps=1e-12)
        self.mlm_bias = nn.Parameter(torch.zeros(m.vocab_size))
        self.nsp = nn.Linear(d, 2) if m.use_nsp else None
        normal_init(self, m.init_std)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None, valid: torch.Tensor,
                positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.tok(tokens) + self.pos[:tokens.shape[1]]
        if self.seg is not None:
            x = x + self.seg(torch.zeros_like(tokens) if segments is None else segments)
        x = self.drop(self.norm(x))
        mask = valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        h = x if positions is None else torch.take_along_dim(x, positions[..., None], 1)
        h = self.mlm_norm(F.gelu(self.mlm_dense(h)))
        logits = h @ self.tok.weight.T + self.mlm_bias
        return logits, (self.nsp(pooled) if self.nsp is not None else None)


def torch_inputs(inputs: dict, torch_mod) -> dict:
    """``BERT.prepare``'s arrays: token ids int64, MLM weights float32."""
    return {k: torch_mod.from_numpy(np.array(v, np.float32 if k == "weights" else np.int64))
            for k, v in inputs.items()}


def make_step(config: Any, inputs: dict) -> Callable[[], torch.Tensor]:
    """One BERT update on ``BERT.prepare``'s ``inputs`` (masked ``inputs``, ``labels``,
    ``weights``, ``tokens`` for the padding mask, ``segment_ids``, ``nsp_label``)."""
    from jssl.methods.text_base import model_kwargs
    from jssl.models.bert import bert

    preset, kw = model_kwargs(config)
    m = bert(preset, int(config.data.vocab_size), max_len=int(config.data.seq_len), **kw)
    model = BERT(m)
    params = list(model.parameters())
    opt = adamw(params, config.optim, inputs["tokens"].shape[0])
    clip = float(config.optim.get("clip_grad_norm") or 0.0)
    p = config.masking.get("max_predictions")
    nsp_weight = float(config.loss.get("nsp_weight", 1.0))
    valid = inputs["tokens"] != PAD
    segments = inputs.get("segment_ids") if m.type_vocab_size > 0 else None

    def step() -> torch.Tensor:
        labels, weights, positions = inputs["labels"], inputs["weights"], None
        if p is not None:
            positions = torch.argsort(-weights, dim=1, stable=True)[:, :p]
            labels, weights = labels.gather(1, positions), weights.gather(1, positions)
        logits, nsp = model(inputs["inputs"], segments, valid, positions)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        loss = (ce * weights.flatten()).sum() / weights.sum().clamp_min(1e-8)
        if nsp is not None:
            loss = loss + nsp_weight * F.cross_entropy(nsp, inputs["nsp_label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        opt.step()
        return loss.detach()

    step.num_params = num_params(params)
    return step
