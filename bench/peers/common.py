"""Shared PyTorch pieces of the peers: the tiny CIFAR-stem ResNet, the MLP heads, LARS, AdamW.

All mirror jssl's modules (``jssl.models.resnet``, ``jssl.models.heads``, ``optax.lars`` /
``optax.adamw`` as configured by ``jssl.train.optim``) layer for layer, so the FLOPs and
parameter counts match; initial values do not matter for timing and are torch's own.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

_BN = dict(eps=1e-5, momentum=0.1)  # torch momentum 0.1 == flax momentum 0.9


def _norm(kind: str, c: int, groups: int) -> nn.Module:
    return nn.BatchNorm2d(c, **_BN) if kind == "batch" else nn.GroupNorm(min(groups, c), c)


class BasicBlock(nn.Module):
    """jssl ``BasicBlock``: conv3x3(stride)-norm-relu-conv3x3-norm (+ 1x1 projection)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, cout, groups)
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      _norm(norm, cout, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu((self.proj(x) if self.proj is not None else x) + y)


class ResNet(nn.Module):
    """jssl ``ResNet`` with ``block="basic"`` and ``stem="cifar"``: pooled features [B, C]."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], stage_sizes: tuple[int, ...],
                 norm: str = "batch", groups: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  _norm(norm, widths[0], groups), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(stage_sizes, widths, strict=True)):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, norm, groups))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def mlp(d_in: int, hidden: int, out: int, num_layers: int) -> nn.Sequential:
    """jssl ``ProjectionMLP`` / ``PredictorMLP`` with ``use_bn=True, last_bn=False``."""
    layers: list[nn.Module] = []
    for _ in range(num_layers - 1):
        layers += [nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden, **_BN), nn.ReLU()]
        d_in = hidden
    layers.append(nn.Linear(d_in, out))
    return nn.Sequential(*layers)


def resnet_from_config(enc: Any, in_channels: int) -> ResNet:
    """The jssl encoder config (``name="resnet"``, a basic-block preset, cifar stem)."""
    from jssl.models.resnet import PRESETS

    preset = PRESETS[enc.preset]
    if enc.get("stem", "imagenet") != "cifar" or preset["block"] != "basic":
        raise ValueError(f"peer ResNet supports stem='cifar' basic blocks, got {dict(enc)}")
    return ResNet(in_channels, tuple(preset["widths"]), tuple(preset["stage_sizes"]),
                  enc.get("norm", "batch"), enc.get("num_groups", 32))


class LARS(torch.optim.Optimizer):
    """``optax.lars`` as jssl configures it: for params with ndim > 1,
    g ← g + wd·p, g ← tc·‖p‖/‖g‖·g (1 if either norm is 0); then u ← lr·g,
    m ← μ·m + u, p ← p − m (the 1-d params skip decay and trust ratio)."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      tc=trust_coefficient))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((pn > 0) & (gn > 0), group["tc"] * pn / gn, 1.0)
                    g = g * ratio
                buf = self.state[p].get("m")
                if buf is None:
                    buf = self.state[p]["m"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)


def adamw(params: list[nn.Parameter], o: Any, batch: int) -> torch.optim.AdamW:
    """``optax.adamw`` as jssl configures it: the peak lr of ``o.lr_scaling``, ``b1``, ``b2``,
    ``eps``, decoupled weight decay on the params with ndim > 1 only."""
    from jssl.train.optim import peak_learning_rate

    lr = peak_learning_rate(float(o.base_lr), batch, o.get("lr_scaling", "linear"))
    return torch.optim.AdamW([{"params": [q for q in params if q.ndim > 1],
                               "weight_decay": o.get("weight_decay", 0.0)},
                              {"params": [q for q in params if q.ndim <= 1],
                               "weight_decay": 0.0}],
                             lr=lr, betas=(o.get("b1", 0.9), o.get("b2", 0.999)),
                             eps=o.get("eps", 1e-8))


def num_params(params: list[nn.Parameter]) -> int:
    """Trainable parameter count (what ``bench/compare.py`` checks against jssl's)."""
    return sum(q.numel() for q in params if q.requires_grad)
