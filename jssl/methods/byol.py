"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"), Algorithm 1:

    online network θ: encoder f_θ, projector g_θ, predictor q_θ
    target network ξ: encoder f_ξ, projector g_ξ (no predictor), ξ ← θ at initialisation
    for a minibatch x of N images:
        v, v' = t(x), t'(x)                         (asymmetric views: blur 1.0 / 0.1,
                                                      solarize 0 / 0.2)
        p  = q_θ(g_θ(f_θ(v))),   p' = q_θ(g_θ(f_θ(v')))      (online predictions)
        z  = g_ξ(f_ξ(v)),        z' = g_ξ(f_ξ(v'))           (target projections)
        loss = ‖p̄ − sg(z̄')‖² + ‖p̄' − sg(z̄)‖²       (= 2 − 2·cos each, mean over the batch)
        θ ← optimizer(θ, ∇_θ loss)                  (LARS, lr 0.2 × B/256, wd 1.5e-6)
        ξ ← τ·ξ + (1 − τ)·θ,  τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2

The target ξ lives in the method's ``extra`` state, not in ``params``: the optimizer never
sees it and no gradient reaches it (``losses.byol`` also stops the gradient of its target).
Its BatchNorm layers run in training mode (batch statistics), as in BYOL's reference code,
so the running averages copied into ``extra`` at initialisation are never read while
training. Both views go through each network in one call, so BatchNorm statistics are over
the 2N views of the global batch (synchronised BN, as in the paper). The loss is a
per-example loss run through ``self.shard``: same value and gradient on any number of
devices. ``features`` is the online encoder's output f_θ(x).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import BYOLParams, byol_views
from jssl.methods.base import Method
from jssl.methods.ema import cosine_tau, ema_update
from jssl.methods.simclr import EncoderProjector, projection_mlp
from jssl.models.encoders import make_encoder
from jssl.models.heads import PredictorMLP

#: The online sub-networks the target network copies (and follows by EMA).
TARGET_PARTS = ("encoder", "projector")


class OnlineNetwork(nn.Module):
    """h = f(x), z = g(h), p = q(z); returns (h, z, p)."""

    encoder: nn.Module
    projector: nn.Module
    predictor: nn.Module

    def __call__(self, x: jax.Array, *, train: bool = True):
        h = self.encoder(x, train=train)
        z = self.projector(h, train=train)
        return h, z, self.predictor(z, train=train)


def target_part(tree: dict[str, Any]) -> dict[str, Any]:
    """The encoder and projector entries of an online collection (params or batch_stats)."""
    return {k: tree[k] for k in TARGET_PARTS if k in tree}


class BYOL(Method):
    name = "byol"
    uses_batch_negatives = False

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        m = config.model
        self.online = OnlineNetwork(make_encoder(m.encoder), projection_mlp(m.projector),
                                    PredictorMLP(hidden_dim=m.predictor.hidden_dim,
                                                 out_dim=m.projector.out_dim,
                                                 num_layers=m.predictor.get("num_layers", 2)))
        self.target = EncoderProjector(make_encoder(m.encoder), projection_mlp(m.projector))
        aug = dict(config.augment)
        self.out_size = aug.pop("size")
        self.view_params = BYOLParams(**{k: tuple(v) if isinstance(v, list | tuple) else v
                                         for k, v in aug.items()})
        self.tau_base = float(config.method_params.tau_base)
        if not 0.0 <= self.tau_base <= 1.0:
            raise ValueError(f"config.method_params.tau_base={self.tau_base} must be in [0, 1]; "
                             f"BYOL uses 0.996 (1000 epochs) or 0.99 (shorter runs)")
        self.total_steps = int(config.train.steps)
        if self.total_steps < 1:
            raise ValueError(f"config.train.steps={self.total_steps} must be > 0 (the EMA "
                             f"schedule τ runs from tau_base to 1 over it)")
        self.byol = self.shard(losses.byol, (0, 1))

    # ------------------------------------------------------------------- networks
    def init(self, key, batch):
        views = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        variables = dict(self.online.init(key, views, train=True))
        # ξ ← θ: the target starts as an exact copy of the online encoder and projector.
        target = {col: target_part(tree) for col, tree in variables.items()}
        return variables, {"target": target}

    # ----------------------------------------------------------------------- loss
    def prepare(self, batch, key):
        v1, v2 = byol_views(key, self.images(batch), self.out_size, params=self.view_params)
        return {"views": jnp.concatenate([v1, v2])}

    def loss(self, params, variables, extra, batch, key, step):
        views = batch["views"]
        (_, z, p), new_vars = self.online.apply({**variables, "params": params}, views,
                                                train=True, mutable=["batch_stats"])
        (_, z_target), _ = self.target.apply(extra["target"], views, train=True,
                                             mutable=["batch_stats"])
        z_target = jax.lax.stop_gradient(z_target)
        p1, p2 = jnp.split(p, 2)
        t1, t2 = jnp.split(z_target, 2)
        loss = self.byol(p1, t2) + self.byol(p2, t1)  # symmetrised
        z1 = z[: p1.shape[0]]
        z1 = z1 / jnp.linalg.norm(z1, axis=-1, keepdims=True)
        metrics = {"z_std": jnp.mean(jnp.std(z1, axis=0)),
                   "tau": cosine_tau(step, self.total_steps, self.tau_base)}
        return loss, (metrics, dict(new_vars))

    # ----------------------------------------------------------------- EMA target
    def tau(self, step: jax.Array) -> jax.Array:
        return cosine_tau(step, self.total_steps, self.tau_base)

    def update_extra(self, params, extra, step):
        """ξ ← τ_k·ξ + (1 − τ_k)·θ for the target's params (k = the step just taken)."""
        target = dict(extra["target"])
        target["params"] = ema_update(target["params"], target_part(params), self.tau(step))
        return {**extra, "target": target}

    def features(self, variables, extra, images):
        def encode(module, x):
            return module.encoder(x, train=False)

        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        return self.online.apply(variables, images, method=encode)
