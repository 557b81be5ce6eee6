"""PyTorch peer of jssl's SimCLR update: ResNet + ProjectionMLP, NT-Xent over the 2N views,
LARS (lr = base_lr × N/256, weight decay and trust ratio on ndim > 1 params)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.peers.common import LARS, mlp, num_params, resnet_from_config


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the 2N anchors of −log softmax over the other 2N − 1 (jssl ``nt_xent``)."""
    a = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    logits = a @ a.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)


def make_step(config: Any, views: torch.Tensor) -> Callable[[], float]:
    """One SimCLR update on ``views`` [2N, C, H, W] (first N: view 1, last N: view 2)."""
    encoder = resnet_from_config(config.model.encoder, views.shape[1])
    p = config.model.projector
    net = torch.nn.Sequential(encoder, mlp(encoder.num_features, p.hidden_dim, p.out_dim,
                                           p.num_layers))
    o = config.optim
    opt = LARS(net.parameters(), lr=o.base_lr * views.shape[0] / 2 / 256,
               weight_decay=o.weight_decay, momentum=o.momentum)
    temperature = float(config.loss.temperature)

    def step() -> float:
        z1, z2 = net(views).chunk(2)
        loss = nt_xent(z1, z2, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step.num_params = num_params(list(net.parameters()))
    return step
