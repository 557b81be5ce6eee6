"""Build a backbone from a config section: ``config.model.encoder``.

    encoder = make_encoder(ConfigDict({"name": "resnet", "preset": "tiny", "stem": "cifar"}))

``name`` picks the family, ``preset`` a size from the family's presets, and any
other field overrides an attribute of the module (``norm``, ``stem``, ``width``,
``patch_size``, ``dtype`` ...). Every encoder maps images [B, H, W, C] to pooled
features [B, D].
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _fields(cfg: Any) -> dict[str, Any]:
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    d.pop("name", None)
    d.pop("preset", None)
    if isinstance(d.get("dtype"), str):
        if d["dtype"] not in _DTYPES:
            raise ValueError(f"config.model.encoder.dtype={d['dtype']!r}; use one of "
                             f"{tuple(_DTYPES)}")
        d["dtype"] = _DTYPES[d["dtype"]]
    return d


def make_encoder(cfg: Any) -> nn.Module:
    """The encoder module named by ``cfg.name`` with preset ``cfg.preset`` and overrides."""
    name = cfg["name"] if "name" in cfg else None
    preset = cfg["preset"] if "preset" in cfg else None
    overrides = _fields(cfg)
    if name == "resnet":
        from jssl.models.resnet import resnet

        return resnet(preset or "resnet18", **overrides)
    if name == "vit":
        from jssl.models.vit import vit

        return vit(preset or "s16", **overrides)
    raise ValueError(f"config.model.encoder.name={name!r} is unknown; use 'resnet' or 'vit'")
