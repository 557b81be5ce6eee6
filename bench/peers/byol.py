"""PyTorch peer of jssl's BYOL update: online ResNet + projector + predictor, a target
ResNet + projector in train-mode BN without gradient, the symmetrised 2 − 2·cos loss, LARS,
then the EMA ξ ← τ·ξ + (1 − τ)·θ of the target's params."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.peers.common import LARS, mlp, num_params, resnet_from_config


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖p̄ − z̄‖² = 2 − 2·cos(p, z) (jssl ``losses.byol``)."""
    return (2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)).mean()


def make_step(config: Any, views: torch.Tensor) -> Callable[[], float]:
    """One BYOL update on ``views`` [2N, C, H, W] (first N: view 1, last N: view 2)."""
    m = config.model
    encoder = resnet_from_config(m.encoder, views.shape[1])
    projector = mlp(encoder.num_features, m.projector.hidden_dim, m.projector.out_dim,
                    m.projector.num_layers)
    predictor = mlp(m.projector.out_dim, m.predictor.hidden_dim, m.projector.out_dim,
                    m.predictor.get("num_layers", 2))
    online = torch.nn.Sequential(encoder, projector)
    target = copy.deepcopy(online)
    for q in target.parameters():
        q.requires_grad_(False)
    params = list(online.parameters()) + list(predictor.parameters())
    o = config.optim
    opt = LARS(params, lr=o.base_lr * views.shape[0] / 2 / 256, weight_decay=o.weight_decay,
               momentum=o.momentum)
    tau = float(config.method_params.tau_base)

    def step() -> float:
        z = online(views)
        p1, p2 = predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = target(views).chunk(2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1 - tau)
        return loss.detach()

    step.num_params = num_params(params)  # the target gets no gradient: not counted
    return step
