"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"), Algorithm 1:

    f_q: encoder + projector + predictor;  f_k: encoder + projector, f_k ← f_q at init
    for a minibatch x of N images:
        x1, x2 = aug(x), aug(x)                     (BYOL's asymmetric views)
        q1, q2 = f_q(x1), f_q(x2)                   (queries, [N, D] each)
        k1, k2 = sg(f_k(x1)), sg(f_k(x2))           (keys from the momentum encoder)
        loss = ctr(q1, k2) + ctr(q2, k1)            (symmetrised)
        θ_q ← optimizer(θ_q, ∇ loss)                 (AdamW for ViT, LARS for ResNet)
        θ_k ← m·θ_k + (1 − m)·θ_q,  m = 1 − (1 − m_0)·(cos(πk/K) + 1)/2    (m_0 = 0.99)

    ctr(q, k) = 2T · CE(q̄·k̄ᵀ/T, labels = the positives' indices)      (q̄, k̄ unit vectors)

No queue: the negatives of a query are the other keys of the *global* batch. Under
``self.shard`` each device gathers every device's keys (as the official
``concat_all_gather``), scores its local queries against all N keys with labels offset by its
position, and the per-query losses are averaged over the global batch; the keys carry a
stop-gradient, so the gather has no backward. The factor 2T makes the loss's gradient scale
independent of T (the paper's pseudo-code).

Heads (official ``moco/builder.py``): every MLP is ``[Linear(no bias)-BN-ReLU] x (L-1) -
Linear(no bias) - BN(affine=False)``: projector 3 layers for ViT / 2 for ResNet, predictor
2 layers, hidden 4096, out 256. Each view goes through each network in its own call
(``jax.vmap`` over the view axis), so BatchNorm statistics are per view of the global batch
(synchronised BN), as ``f_q(x1)``, ``f_q(x2)`` in the paper; the running averages kept for
evaluation are the mean of the two views' updates. The momentum encoder runs its BN in
training mode (batch statistics), its running averages are never read while training.
``features`` is the query encoder's output (before the projector).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jssl.augment.recipes import BYOLParams, byol_views
from jssl.losses._common import (
    AxisName,
    axis_index,
    check_positive,
    check_same_shape,
    gather,
    global_mean,
    l2_normalize,
    matmul_t,
)
from jssl.methods.base import Method
from jssl.methods.byol import OnlineNetwork, target_part
from jssl.methods.ema import cosine_tau, ema_update
from jssl.methods.simclr import EncoderProjector
from jssl.models.encoders import make_encoder
from jssl.models.heads import ProjectionMLP

MODEL_COLLECTIONS = ("params", "batch_stats")


def mocov3_ctr(q: jax.Array, k: jax.Array, temperature: float | jax.Array = 0.2, *,
               axis_name: AxisName = None) -> jax.Array:
    """MoCo v3's ``ctr(q, k) = 2T · mean_i −log softmax_j(q̄_i·k̄_j / T)[i]``.

    q̄, k̄ are L2-normalised; j runs over the keys of the whole (global) batch, the positive of
    query i is key i. Reduction: mean over the global batch of queries, times 2T. No gradient
    reaches ``k``. Inside ``shard_map`` the keys are all-gathered and the labels of a
    device's queries are offset by its index · local batch.

    Args:
      q: [B, D] queries (predictor outputs). k: [B, D] keys (momentum encoder outputs).
      temperature: T > 0 (0.2 for ViT, 1.0 in the official ResNet-50 recipe).
    """
    check_same_shape("q", q, "k", k)
    check_positive("temperature", temperature, "MoCo v3 uses 0.2 (ViT) or 1.0 (ResNet-50)")
    n = q.shape[0]
    qn = l2_normalize(q)
    keys = gather(jax.lax.stop_gradient(l2_normalize(k)), axis_name)  # [N_global, D]
    logits = matmul_t(qn, keys) / temperature  # [n, N_global]
    labels = axis_index(axis_name) * n + jnp.arange(n)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - picked
    return 2.0 * temperature * global_mean(jnp.sum(ce), n, axis_name)


def moco_mlp(cfg: Any, out_dim: int) -> ProjectionMLP:
    """``_build_mlp`` of the official code: bias-free Linears, BN, last BN without affine."""
    return ProjectionMLP(hidden_dim=cfg.hidden_dim, out_dim=out_dim, num_layers=cfg.num_layers,
                         use_bn=True, last_bn=cfg.get("last_bn", True), last_bn_affine=False)


def per_view(net, variables: dict[str, Any], views: jax.Array, **kwargs):
    """``net.apply`` on each view of ``views [N, V, ...]`` separately (BN per view).

    Returns (the network's outputs stacked on a leading view axis, new ``batch_stats``
    averaged over the views).
    """
    def one(x):
        return net.apply(variables, x, train=True, mutable=["batch_stats"], **kwargs)

    out, new = jax.vmap(one, in_axes=1)(views)
    return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), dict(new))


class MoCoV3(Method):
    name = "mocov3"
    uses_batch_negatives = True

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        m = config.model
        dim = int(m.projector.out_dim)
        self.online = OnlineNetwork(make_encoder(m.encoder), moco_mlp(m.projector, dim),
                                    moco_mlp(m.predictor, dim))
        self.momentum_net = EncoderProjector(make_encoder(m.encoder), moco_mlp(m.projector, dim))
        aug = dict(config.augment)
        self.out_size = aug.pop("size")
        self.view_params = BYOLParams(**{k: tuple(v) if isinstance(v, list | tuple) else v
                                         for k, v in aug.items()})
        mp = config.method_params
        self.momentum = float(mp.momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"config.method_params.momentum={self.momentum} must be in [0, 1]; "
                             f"MoCo v3 uses 0.99 (cosine schedule to 1)")
        self.total_steps = int(config.train.steps)
        if self.total_steps < 1:
            raise ValueError(f"config.train.steps={self.total_steps} must be > 0 (the momentum "
                             f"schedule runs from method_params.momentum to 1 over it)")
        self.temperature = float(config.loss.temperature)
        if not self.temperature > 0:
            raise ValueError(f"config.loss.temperature={self.temperature} must be > 0; MoCo v3 "
                             f"uses 0.2 for ViT and 1.0 for ResNet-50")
        self.ctr = self.shard(mocov3_ctr, (0, 1), temperature=self.temperature)

    # ------------------------------------------------------------------- networks
    def init(self, key, batch):
        views = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        variables = dict(self.online.init(key, views, train=True))
        # θ_k ← θ_q: the momentum encoder starts as a copy of the encoder and projector.
        momentum_encoder = {col: target_part(tree) for col, tree in variables.items()}
        return variables, {"momentum_encoder": momentum_encoder}

    def momentum_at(self, step: jax.Array) -> jax.Array:
        return cosine_tau(step, self.total_steps, self.momentum)

    # ----------------------------------------------------------------------- loss
    def prepare(self, batch, key):
        x1, x2 = byol_views(key, self.images(batch), self.out_size, params=self.view_params)
        return {"views": jnp.stack([x1, x2], axis=1)}  # [N, 2, S, S, C]: batch axis first

    def loss(self, params, variables, extra, batch, key, step):
        views = batch["views"]
        online_vars = {k: v for k, v in variables.items() if k in MODEL_COLLECTIONS}
        (_, z, q), new_vars = per_view(self.online, {**online_vars, "params": params}, views)
        (_, k), _ = per_view(self.momentum_net, extra["momentum_encoder"], views)
        k = jax.lax.stop_gradient(k)
        loss = self.ctr(q[0], k[1]) + self.ctr(q[1], k[0])
        qn, kn = l2_normalize(q[0]), l2_normalize(k[1])
        metrics = {"q_std": jnp.mean(jnp.std(l2_normalize(z[0]), axis=0)),
                   "pos_sim": jnp.mean(jnp.sum(qn * kn, axis=-1)),
                   "momentum": self.momentum_at(step)}
        return loss, (metrics, {**variables, **new_vars})

    # --------------------------------------------------------- momentum encoder
    def update_extra(self, params, extra, step):
        """θ_k ← m·θ_k + (1 − m)·θ_q for the encoder and projector (m at the step just taken)."""
        momentum_encoder = dict(extra["momentum_encoder"])
        momentum_encoder["params"] = ema_update(momentum_encoder["params"], target_part(params),
                                                self.momentum_at(step))
        return {**extra, "momentum_encoder": momentum_encoder}

    def features(self, variables, extra, images):
        def encode(module, x):
            return module.encoder(x, train=False)

        variables = {k: v for k, v in variables.items() if k in MODEL_COLLECTIONS}
        return self.online.apply(variables, images, method=encode)
