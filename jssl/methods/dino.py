"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"),
Algorithm 1 with the official ``main_dino.py`` schedules:

    student g_θs, teacher g_θt (encoder + DINO head), θt ← θs at initialisation
    for a minibatch x of N images:
        x_1, x_2, x_3 … x_V = multicrop(x)          (2 global crops, V − 2 smaller local crops)
        s_v = g_θs(x_v) for every crop               (student sees all V crops)
        t_g = sg(g_θt(x_g)) for the 2 global crops   (teacher sees only the globals)
        P_t(g) = softmax((t_g − c) / τ_t)            (centring and sharpening)
        loss = Σ_{g, v≠g} H(P_t(g), softmax(s_v / τ_s)) / #pairs     (mean over the batch)
        θs ← AdamW(θs, clip(∇ loss))                 (clip 3.0; last layer frozen for epoch 1)
        θt ← λ·θt + (1 − λ)·θs,   λ: 0.996 → 1 cosine per step
        c  ← m·c + (1 − m)·mean over the 2N teacher outputs of the global batch   (m = 0.9)

    τ_s = 0.1; τ_t rises linearly from 0.04 to its final value (0.04–0.07) over the warm-up.

Layout. ``prepare`` returns the crops batch-major, ``[N, 2, G, G, C]`` and ``[N, L, l, l, C]``,
so a device holds every crop of its own examples; crops of one resolution go through the
encoder in one call (DINO's ``MultiCropWrapper``: BatchNorm statistics per resolution group,
one head call on all crops). The loss runs through ``self.shard`` (its batch mean is global).

State. The teacher's params are the method's ``extra`` state (EMA in ``update_extra``). The
centre is computed from this step's teacher outputs, which only the loss sees, so it lives in
``variables["center"]`` like MoCo v2's queue: the loss returns the new centre (updated on the
*global* arrays: GSPMD inserts the all-reduce of DINO's ``dist.all_reduce``) after using the
old one. DINO's teacher runs in training mode and its BatchNorm running averages (never
EMA'd, as DINO averages ``parameters()`` only) come from its own forward passes: they are kept
in ``variables["teacher_stats"]`` (ResNet encoders only). ``features`` is the teacher encoder
(DINO evaluates the teacher).

Schedules, per step where DINO's are per epoch: the teacher temperature warm-up is linear in
the step (DINO: one value per epoch), the last layer is frozen for ``config.optim.freeze_steps``
(one epoch of steps) through the optimizer's ``freeze_pattern``. The ViT student may use
stochastic depth; the teacher never does (``drop_path_rate=0``), as in ``main_dino.py``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import DINOParams, dino_multicrop
from jssl.methods.base import Method
from jssl.methods.ema import cosine_tau, ema_update
from jssl.models.encoders import make_encoder
from jssl.models.heads import LAST_LAYER, DINOHead

#: a param path of the head's prototype layer, which ``config.optim.freeze_pattern`` must match
LAST_LAYER_PATH = f"head/{LAST_LAYER}/kernel"


class MultiCropNetwork(nn.Module):
    """h = f(x) for each resolution group of crops (one encoder call each), logits = head(h)."""

    encoder: nn.Module
    head: nn.Module

    def __call__(self, crops: Sequence[jax.Array], *, train: bool = True):
        h = jnp.concatenate([self.encoder(x, train=train) for x in crops])
        return h, self.head(h, train=train)


def teacher_temperature(step: jax.Array, warmup_temp: float, temp: float,
                        warmup_steps: int) -> jax.Array:
    """τ_t(k) = warmup_temp + (temp − warmup_temp)·min(k / warmup_steps, 1) (float32)."""
    if warmup_steps <= 0:
        return jnp.float32(temp)
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
    return jnp.float32(warmup_temp) + jnp.float32(temp - warmup_temp) * frac


def _flatten_crops(x: jax.Array) -> jax.Array:
    """[N, V, h, w, C] -> [N·V, h, w, C] (example-major)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _views(logits: jax.Array, n: int) -> list[jax.Array]:
    """[N·V, K] example-major -> V arrays [N, K], one per crop."""
    per = logits.reshape(n, -1, logits.shape[-1])
    return [per[:, v] for v in range(per.shape[1])]


class DINO(Method):
    name = "dino"
    uses_batch_negatives = False

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        m = config.model
        head = DINOHead(**dict(m.head))
        enc = m.encoder.to_dict() if hasattr(m.encoder, "to_dict") else dict(m.encoder)
        self.student = MultiCropNetwork(make_encoder(enc), head)
        if "drop_path_rate" in enc:
            enc = {**enc, "drop_path_rate": 0.0}
        self.teacher = MultiCropNetwork(make_encoder(enc), head)
        self.out_dim = int(m.head.out_dim)

        aug = dict(config.augment)
        self.global_size, self.local_size = int(aug.pop("size")), int(aug.pop("local_size"))
        self.num_local = int(aug.pop("num_local"))
        self.crop_params = DINOParams(**{k: tuple(v) if isinstance(v, list | tuple) else v
                                         for k, v in aug.items()})
        mp = config.method_params
        self.momentum_teacher = float(mp.momentum_teacher)
        self.center_momentum = float(mp.center_momentum)
        for field in ("momentum_teacher", "center_momentum"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"config.method_params.{field}={value} must be in [0, 1]; "
                                 f"DINO uses momentum_teacher 0.996, center_momentum 0.9")
        self.student_temp = float(mp.student_temp)
        self.warmup_teacher_temp = float(mp.warmup_teacher_temp)
        self.teacher_temp = float(mp.teacher_temp)
        for field in ("student_temp", "warmup_teacher_temp", "teacher_temp"):
            if not getattr(self, field) > 0:
                raise ValueError(f"config.method_params.{field}={getattr(self, field)} must be "
                                 f"> 0; DINO uses student 0.1, teacher 0.04 → 0.04–0.07")
        self.teacher_temp_warmup_steps = int(mp.teacher_temp_warmup_steps)
        self.total_steps = int(config.train.steps)
        if self.total_steps < 1:
            raise ValueError(f"config.train.steps={self.total_steps} must be > 0 (the teacher "
                             f"momentum runs from momentum_teacher to 1 over it)")
        self.freeze_steps = int(config.optim.get("freeze_steps", 0) or 0)
        pattern = config.optim.get("freeze_pattern", "") or ""
        if self.freeze_steps and not re.search(pattern, LAST_LAYER_PATH):
            raise ValueError(f"config.optim.freeze_pattern={pattern!r} does not match DINO's "
                             f"last layer {LAST_LAYER_PATH!r}; use {LAST_LAYER!r}")
        self.freeze_pattern = pattern
        self.dino = self.shard(losses.dino, (0, 1))

    # ------------------------------------------------------------------- networks
    def _crops(self, channels: int, n: int = 2) -> list[jax.Array]:
        sizes = [self.global_size] + ([self.local_size] if self.num_local else [])
        return [jnp.zeros((n, s, s, channels)) for s in sizes]

    def init(self, key, batch):
        # Globals first: a ViT's learned positions are stored for the global grid.
        variables = dict(self.student.init(key, self._crops(batch["image"].shape[-1]),
                                           train=False))
        extra = {"teacher": {"params": variables["params"]}}  # θt ← θs
        variables["center"] = jnp.zeros((self.out_dim,), jnp.float32)
        if "batch_stats" in variables:
            variables["teacher_stats"] = variables["batch_stats"]
        return variables, extra

    def freeze_patterns(self) -> dict[str, int]:
        return {self.freeze_pattern: self.freeze_steps} if self.freeze_steps else {}

    def teacher_temp_at(self, step: jax.Array) -> jax.Array:
        return teacher_temperature(step, self.warmup_teacher_temp, self.teacher_temp,
                                   self.teacher_temp_warmup_steps)

    def momentum_at(self, step: jax.Array) -> jax.Array:
        return cosine_tau(step, self.total_steps, self.momentum_teacher)

    # ----------------------------------------------------------------------- loss
    def prepare(self, batch, key):
        globals_, locals_ = dino_multicrop(key, self.images(batch), self.global_size,
                                           self.local_size, self.num_local,
                                           params=self.crop_params)
        out = {"global_crops": jnp.stack(globals_, axis=1)}  # [N, 2, G, G, C]
        if locals_:
            out["local_crops"] = jnp.stack(locals_, axis=1)  # [N, L, l, l, C]
        return out

    def loss(self, params, variables, extra, batch, key, step):
        g = batch["global_crops"]
        n = g.shape[0]
        crops = [_flatten_crops(g)]
        if "local_crops" in batch:
            crops.append(_flatten_crops(batch["local_crops"]))
        student_vars = {"params": params}
        teacher_vars = {"params": extra["teacher"]["params"]}
        if "batch_stats" in variables:
            student_vars["batch_stats"] = variables["batch_stats"]
            teacher_vars["batch_stats"] = variables["teacher_stats"]
        (_, s), new_student = self.student.apply(student_vars, crops, train=True,
                                                 mutable=["batch_stats"], rngs={"dropout": key})
        (_, t), new_teacher = self.teacher.apply(teacher_vars, crops[:1], train=True,
                                                 mutable=["batch_stats"])
        t = jax.lax.stop_gradient(t)
        students = _views(s[: 2 * n], n) + (_views(s[2 * n:], n) if len(crops) > 1 else [])
        teachers = _views(t, n)
        temp = self.teacher_temp_at(step)
        center = variables["center"]
        loss = self.dino(students, teachers, center, jnp.float32(self.student_temp), temp)

        new_vars = {**variables, "center": losses.dino_update_center(
            center, teachers, self.center_momentum)}
        if "batch_stats" in new_student:
            new_vars["batch_stats"] = new_student["batch_stats"]
            new_vars["teacher_stats"] = new_teacher["batch_stats"]
        probs = jax.nn.softmax((t - center) / temp, axis=-1)
        metrics = {"teacher_temp": temp, "momentum": self.momentum_at(step),
                   "teacher_entropy": -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-12), -1))}
        return loss, (metrics, new_vars)

    # -------------------------------------------------------------------- teacher
    def update_extra(self, params, extra, step):
        """θt ← λ·θt + (1 − λ)·θs (λ at the step just taken)."""
        teacher = {"params": ema_update(extra["teacher"]["params"], params,
                                        self.momentum_at(step))}
        return {**extra, "teacher": teacher}

    def features(self, variables, extra, images):
        """The teacher encoder's output (DINO evaluates the teacher)."""
        def encode(module, x):
            return module.encoder(x, train=False)

        teacher_vars = {"params": extra["teacher"]["params"]}
        if "teacher_stats" in variables:
            teacher_vars["batch_stats"] = variables["teacher_stats"]
        return self.teacher.apply(teacher_vars, images, method=encode)
