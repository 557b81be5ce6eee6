"""PyTorch peer of jssl's MAE update: ViT encoder on the visible patches (+ cls, fixed 2-D
sin-cos positions), a narrow decoder over all patches (mask tokens un-shuffled by
``ids_restore``), the norm-pix MSE on masked patches, AdamW (decay on ndim > 1 params and on
the q/k/v biases, [H, d_h] in flax).
Pre-norm blocks: LayerNorm(1e-6) → MHSA, LayerNorm → exact-GELU MLP (ratio 4)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.peers.common import num_params
from jssl.models.vit import sincos_2d_pos_embed


def _blocks(dim: int, heads: int, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                       layer_norm_eps=1e-6, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MAE(nn.Module):
    def __init__(self, channels: int, side: int, p: int, dim: int, depth: int, heads: int,
                 ddim: int, ddepth: int, dheads: int):
        super().__init__()
        g = side // p
        self.p = p
        self.patch = nn.Conv2d(channels, dim, p, p)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", torch.from_numpy(
            np.asarray(sincos_2d_pos_embed(dim, (g, g), cls_token=True), np.float32))[None])
        self.register_buffer("dpos", torch.from_numpy(
            np.asarray(sincos_2d_pos_embed(ddim, (g, g), cls_token=True), np.float32))[None])
        self.encoder, self.norm = _blocks(dim, heads, depth), nn.LayerNorm(dim, eps=1e-6)
        self.dembed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder, self.dnorm = _blocks(ddim, dheads, ddepth), nn.LayerNorm(ddim, eps=1e-6)
        self.pred = nn.Linear(ddim, p * p * channels)

    def forward(self, x, ids_keep, ids_restore):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos[:, 1:]
        t = torch.gather(t, 1, ids_keep[..., None].expand(-1, -1, t.shape[-1]))
        t = torch.cat([(self.cls + self.pos[:, :1]).expand(t.shape[0], -1, -1), t], 1)
        z = self.dembed(self.norm(self.encoder(t)))
        b, n_vis, d = z.shape[0], z.shape[1] - 1, z.shape[2]
        rest = torch.cat([z[:, 1:], self.mask_token.expand(b, ids_restore.shape[1] - n_vis, -1)],
                         1)
        rest = torch.gather(rest, 1, ids_restore[..., None].expand(-1, -1, d))
        y = self.decoder(torch.cat([z[:, :1], rest], 1) + self.dpos)
        return self.pred(self.dnorm(y))[:, 1:]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p·p·C], pixels ordered (row, column, channel) as jssl."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def torch_inputs(inputs: dict, torch_mod) -> dict:
    return {"views": torch_mod.from_numpy(np.array(inputs["views"])).permute(0, 3, 1, 2)
            .contiguous(),
            "ids_keep": torch_mod.from_numpy(np.array(inputs["ids_keep"], np.int64)),
            "ids_restore": torch_mod.from_numpy(np.array(inputs["ids_restore"], np.int64))}


def make_step(config: Any, inputs: dict) -> Callable[[], torch.Tensor]:
    e, d = config.model.encoder, config.model.decoder
    x, keep, restore = inputs["views"], inputs["ids_keep"], inputs["ids_restore"]
    model = MAE(x.shape[1], x.shape[2], e.patch_size, e.dim, e.depth, e.num_heads, d.dim,
                d.depth, d.num_heads)
    o = config.optim
    # jssl decays ndim > 1 params, which includes flax's q/k/v biases [H, d_h] (torch: 1-d).
    decay_names = {n for n, q in model.named_parameters()
                   if q.ndim > 1 or n.endswith("in_proj_bias")}
    decay = [q for n, q in model.named_parameters() if n in decay_names]
    rest = [q for n, q in model.named_parameters() if n not in decay_names]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=o.base_lr * x.shape[0] / 256, betas=(o.b1, o.b2), eps=1e-8)
    mask = torch.ones(restore.shape)
    mask[:, :keep.shape[1]] = 0
    mask = torch.gather(mask, 1, restore)

    def step() -> torch.Tensor:
        pred = model(x, keep, restore)
        target = patchify(x, e.patch_size)
        if config.loss.norm_pix:
            mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mu) / (var + 1e-6).sqrt()
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step.num_params = num_params(list(model.parameters()))
    return step
