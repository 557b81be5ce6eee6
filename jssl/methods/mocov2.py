"""MoCo v2 (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines with
Momentum Contrastive Learning"), Algorithm 1 of MoCo with v2's MLP head, augmentation and
temperature:

    query encoder f_q (ResNet + 2-layer MLP head), key encoder f_k ← f_q at initialisation
    queue: K keys, initialised with random unit vectors
    for a minibatch x of N images:
        x_q, x_k = aug(x), aug(x)                   (crop 0.2–1, jitter, grayscale, blur)
        q = f_q(x_q)                                [N, D]
        k = sg(f_k(x_k))                            [N, D], BN over shuffled sub-batches
        loss = −log exp(q·k/T) / (exp(q·k/T) + Σ_j exp(q·queue_j/T))   (T = 0.2, q, k unit)
        θ_q ← SGD(θ_q, ∇ loss)                      (lr 0.03 × B/256, wd 1e-4, cosine)
        θ_k ← m·θ_k + (1 − m)·θ_q                   (m = 0.999, or cosine m → 1)
        enqueue k, dequeue the N oldest keys

State. The key encoder (params and BatchNorm statistics) is the method's ``extra`` state,
updated by ``update_extra`` after each optimizer step; official MoCo updates it at the start
of the next forward pass, which is the same sequence of key encoders. The queue is computed
from this step's keys, which only the loss sees, so it is a non-param variable collection,
``variables["queue"]`` (like BatchNorm statistics, state written by the forward pass): the
loss returns the new queue with the new BatchNorm statistics, the train state carries and
checkpoints it, and it is replicated on every device.

Queue update. ``moco_update_queue(queue, k)`` runs on the *global* key array (no
``axis_name``): under jit the global array is already in global batch order (device 0's rows
first), and GSPMD inserts the all-gather. It is the same function and order as calling it
inside ``shard_map`` with ``axis_name`` (which gathers with a psum), without the zero-padded
all-reduce. Row 0 is the newest key.

Shuffle BN. jssl's BatchNorm statistics are global, but global (synchronised) BN does not stop
MoCo's shortcut: the current batch's keys share one set of statistics that the queued keys,
from earlier batches, do not have, so the statistics betray which key is the positive
(K. He, facebookresearch/moco#46). MoCo's fix is kept, independent of the device count: with
``method_params.shuffle_bn_group = g`` > 0 the query encoder normalises contiguous groups of g
examples and the key encoder groups of g examples of a random permutation of the batch
(un-permuted afterwards), exactly what MoCo's 8 GPUs × 32 images do. ``g = 0`` uses global BN.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import MoCoV2Params, mocov2_views
from jssl.methods.base import Method
from jssl.methods.ema import cosine_tau, ema_update
from jssl.methods.simclr import EncoderProjector, projection_mlp
from jssl.models.encoders import make_encoder

SCHEDULES = ("constant", "cosine")
MODEL_COLLECTIONS = ("params", "batch_stats")


def model_vars(variables: dict[str, Any]) -> dict[str, Any]:
    """The flax collections of the encoder (the queue is not one)."""
    return {k: v for k, v in variables.items() if k in MODEL_COLLECTIONS}


def grouped_apply(net: EncoderProjector, variables: dict[str, Any], x: jax.Array, group: int):
    """``net.apply(variables, x, train=True)`` with BatchNorm statistics per group of ``group``
    consecutive examples (one GPU's BN in MoCo). Returns (z [N, D], new batch_stats averaged
    over the groups). ``group=0``: one group, the whole global batch."""
    if group == 0:
        (_, z), new = net.apply(variables, x, train=True, mutable=["batch_stats"])
        return z, new
    n = x.shape[0]

    def one(xg):
        (_, z), new = net.apply(variables, xg, train=True, mutable=["batch_stats"])
        return z, new

    z, new = jax.vmap(one)(x.reshape(n // group, group, *x.shape[1:]))
    return z.reshape(n, -1), jax.tree.map(lambda s: jnp.mean(s, axis=0), new)


class MoCoV2(Method):
    name = "mocov2"
    uses_batch_negatives = True

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        m = config.model
        self.query_net = EncoderProjector(make_encoder(m.encoder), projection_mlp(m.projector))
        self.key_net = EncoderProjector(make_encoder(m.encoder), projection_mlp(m.projector))
        self.dim = int(m.projector.out_dim)
        aug = dict(config.augment)
        self.out_size = aug.pop("size")
        self.view_params = MoCoV2Params(**aug)
        mp, batch = config.method_params, int(config.train.batch_size)
        self.queue_size = int(mp.queue_size)
        if self.queue_size < batch:
            raise ValueError(f"config.method_params.queue_size={self.queue_size} is smaller than "
                             f"config.train.batch_size={batch}; the queue must hold at least one "
                             f"batch of keys (MoCo uses 65536)")
        self.momentum = float(mp.momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"config.method_params.momentum={self.momentum} must be in [0, 1]; "
                             f"MoCo uses 0.999")
        self.schedule = mp.get("momentum_schedule", "constant")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"config.method_params.momentum_schedule={self.schedule!r} is "
                             f"unknown; use one of {SCHEDULES}")
        self.total_steps = int(config.train.steps)
        self.group = int(mp.get("shuffle_bn_group", 0))
        if self.group < 0 or (self.group and batch % self.group):
            raise ValueError(f"config.method_params.shuffle_bn_group={self.group} must be 0 "
                             f"(global BN) or divide config.train.batch_size={batch}; MoCo "
                             f"uses 32")
        self.moco = self.shard(losses.moco, (0, 1), temperature=config.loss.temperature)

    # ------------------------------------------------------------------- networks
    def init(self, key, batch):
        views = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        net_key, queue_key = jax.random.split(key)
        variables = dict(self.query_net.init(net_key, views, train=True))
        key_encoder = dict(variables)  # θ_k ← θ_q (and its BatchNorm statistics)
        queue = jax.random.normal(queue_key, (self.queue_size, self.dim), jnp.float32)
        variables["queue"] = queue / jnp.linalg.norm(queue, axis=-1, keepdims=True)
        return variables, {"key_encoder": key_encoder}

    def momentum_at(self, step: jax.Array) -> jax.Array:
        if self.schedule == "cosine":
            return cosine_tau(step, self.total_steps, self.momentum)
        return jnp.float32(self.momentum)

    # ----------------------------------------------------------------------- loss
    def keys(self, key_encoder: dict[str, Any], x_k: jax.Array, perm_key: jax.Array):
        """k = f_k(x_k) with shuffled BN: permute, encode per group, un-permute."""
        if self.group == 0:
            return grouped_apply(self.key_net, key_encoder, x_k, 0)[0]
        perm = jax.random.permutation(perm_key, x_k.shape[0])
        k_shuffled, _ = grouped_apply(self.key_net, key_encoder, x_k[perm], self.group)
        return k_shuffled[jnp.argsort(perm)]

    def prepare(self, batch, key):
        view_key, _ = jax.random.split(key)
        x_q, x_k = mocov2_views(view_key, self.images(batch), self.out_size,
                                params=self.view_params)
        return {"views_q": x_q, "views_k": x_k}

    def loss(self, params, variables, extra, batch, key, step):
        _, perm_key = jax.random.split(key)
        x_q, x_k = batch["views_q"], batch["views_k"]
        q, new_vars = grouped_apply(self.query_net, {**model_vars(variables), "params": params},
                                    x_q, self.group)
        k = jax.lax.stop_gradient(self.keys(extra["key_encoder"], x_k, perm_key))
        queue = variables["queue"]
        loss = self.moco(q, k, queue)
        new_vars = {**new_vars, "queue": losses.moco_update_queue(queue, k)}
        qn = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
        kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
        metrics = {"q_std": jnp.mean(jnp.std(qn, axis=0)),
                   "pos_sim": jnp.mean(jnp.sum(qn * kn, axis=-1)),
                   "momentum": self.momentum_at(step)}
        return loss, (metrics, new_vars)

    # --------------------------------------------------------- momentum encoder
    def update_extra(self, params, extra, step):
        """θ_k ← m·θ_k + (1 − m)·θ_q (m at the step just taken)."""
        key_encoder = dict(extra["key_encoder"])
        key_encoder["params"] = ema_update(key_encoder["params"], params, self.momentum_at(step))
        return {**extra, "key_encoder": key_encoder}

    def features(self, variables, extra, images):
        h, _ = self.query_net.apply(model_vars(variables), images, train=False)
        return h
