"""Optimizers and learning-rate schedules from ``config.optim``.

``make_optimizer(config.optim, global_batch=..., total_steps=...)`` returns
``(tx, schedule, info)``: the optax transformation, the learning-rate schedule
(step -> lr, for logging) and a dict of the resolved values the trainer logs.

Fields of ``config.optim`` (defaults in brackets):

* ``name``: ``lars`` | ``lamb`` | ``adamw`` | ``adam`` | ``sgd``.
* ``base_lr``: learning rate for a batch of 256; ``lr_scaling`` [``linear``]
  turns it into the peak lr: ``linear``: ``base_lr * global_batch / 256``;
  ``sqrt``: ``base_lr * sqrt(global_batch / 256)``; ``none``: ``base_lr``.
* ``schedule`` [``cosine``]: ``cosine`` = linear warmup from 0 over
  ``warmup_steps`` [0], then cosine decay to ``end_lr_factor * peak`` [0.0] at
  ``total_steps``; ``linear`` = the same warmup, then linear decay to
  ``end_lr_factor * peak`` at ``total_steps`` (fairseq's ``polynomial_decay``,
  wav2vec 2.0 and BERT); ``constant`` = the same warmup, then the peak lr.
* ``weight_decay`` [0.0]: decoupled (scaled by the lr) for adamw, lamb and lars;
  added to the gradient (L2, PyTorch style) for sgd and adam. Never applied to
  params with ``ndim <= 1`` (biases, norm scales and offsets, scalars such as
  learned temperatures): the standard SimCLR/BYOL/MAE/DINO rule.
  ``weight_decay_end`` [None]: if set, the decay follows a cosine from
  ``weight_decay`` at step 0 to ``weight_decay_end`` at ``total_steps`` (DINO: 0.04 -> 0.4).
* LARS (``trust_coefficient`` [0.001], ``momentum`` [0.9], ``nesterov``): the
  same ``ndim <= 1`` params are also excluded from the trust-ratio adaptation.
* ``momentum`` [0.9] / ``nesterov`` [False] for sgd; ``b1`` [0.9], ``b2``
  [0.999; MAE uses 0.95], ``eps`` [1e-8; lamb 1e-6] for adam, adamw and lamb.
* ``clip_grad_norm`` [0 = off]: clip gradients to this global norm first;
  ``clip_per_param`` [False]: clip each param's gradient to this norm separately
  instead, ``g·min(1, c/(‖g‖ + 1e-6))`` (DINO's ``utils.clip_gradients``).
* ``freeze_pattern`` [""] and ``freeze_steps`` [0]: params whose '/'-joined
  path matches the regex (``re.search``) get neither gradient nor update for the
  first ``freeze_steps`` steps (DINO freezes its last layer for an epoch).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("lars", "lamb", "adamw", "adam", "sgd")
LR_SCALINGS = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "linear", "constant")


def path_str(path: tuple) -> str:
    """'/'-joined names of a pytree key path: ``('encoder', 'Dense_0', 'kernel')`` -> str."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_paths(params: Any) -> Any:
    """A pytree like ``params`` holding each leaf's '/'-joined path."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), params)


def decay_mask(params: Any) -> Any:
    """True for params that get weight decay (and LARS adaptation): ``ndim > 1``."""
    return jax.tree.map(lambda x: len(x.shape if hasattr(x, "shape") else ()) > 1, params)


def path_mask(pattern: str) -> Callable[[Any], Any]:
    """Mask function: True where the param's '/'-joined path matches ``pattern``."""
    regex = re.compile(pattern)
    return lambda params: jax.tree.map(lambda p: bool(regex.search(p)), param_paths(params))


class ZeroUntilState(NamedTuple):
    count: jax.Array


def zero_updates_until(steps: int) -> optax.GradientTransformation:
    """Zero all updates while the transformation's own step count is below ``steps``.

    Wrap in ``optax.masked`` to freeze only some params.
    """

    def init_fn(params):
        del params
        return ZeroUntilState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        frozen = state.count < steps
        updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), updates)
        return updates, ZeroUntilState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale every leaf ``g`` by ``min(1, max_norm / (‖g‖ + 1e-6))`` (per-tensor clipping)."""

    def one(g):
        norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
        return (g * jnp.minimum(1.0, max_norm / (norm + 1e-6))).astype(g.dtype)

    return optax.stateless(lambda updates, params=None: jax.tree.map(one, updates))


def _get(cfg: Any, name: str, default: Any) -> Any:
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def _check(ok: bool, field: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"config.optim.{field}={value!r} is invalid; {fix}")


def peak_learning_rate(base_lr: float, global_batch: int, lr_scaling: str) -> float:
    """The lr after the batch-size scaling rule (reference batch 256)."""
    if lr_scaling == "linear":
        return base_lr * global_batch / 256
    if lr_scaling == "sqrt":
        return base_lr * math.sqrt(global_batch / 256)
    return base_lr


def _schedule(kind: str, peak: float, end: float, warmup: int, total: int) -> optax.Schedule:
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=end)
    if kind == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup),
             optax.linear_schedule(peak, end, max(total - warmup, 1))], [warmup])
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )


def cosine_weight_decay(start: float, end: float, total_steps: int) -> optax.Schedule:
    """Cosine from ``start`` (step 0) to ``end`` (``total_steps`` and after)."""

    def schedule(step):
        frac = jnp.minimum(step, total_steps) / total_steps
        return end + 0.5 * (start - end) * (1 + jnp.cos(jnp.pi * frac))

    return schedule


def make_optimizer(
    config: Any, *, global_batch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule, dict[str, Any]]:
    """Build ``(tx, schedule, info)`` from ``config.optim`` (see the module docstring)."""
    name = _get(config, "name", None)
    _check(name in OPTIMIZERS, "name", name, f"use one of {OPTIMIZERS}")
    base_lr = _get(config, "base_lr", None)
    _check(isinstance(base_lr, int | float) and base_lr >= 0, "base_lr", base_lr,
           "set a learning rate >= 0 (for a batch of 256)")
    scaling = _get(config, "lr_scaling", "linear")
    _check(scaling in LR_SCALINGS, "lr_scaling", scaling, f"use one of {LR_SCALINGS}")
    kind = _get(config, "schedule", "cosine")
    _check(kind in SCHEDULES, "schedule", kind, f"use one of {SCHEDULES}")
    if not (isinstance(global_batch, int) and global_batch > 0):
        raise ValueError(f"global_batch={global_batch!r} must be a positive int")
    if not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"total_steps={total_steps!r} must be a positive int")
    warmup = _get(config, "warmup_steps", 0)
    _check(isinstance(warmup, int) and 0 <= warmup <= total_steps, "warmup_steps", warmup,
           f"use an int in [0, total_steps={total_steps}]")
    end_factor = _get(config, "end_lr_factor", 0.0)
    _check(0 <= end_factor <= 1, "end_lr_factor", end_factor,
           "use a fraction of the peak lr in [0, 1]")
    wd = _get(config, "weight_decay", 0.0)
    _check(wd >= 0, "weight_decay", wd, "use a value >= 0")
    wd_end = _get(config, "weight_decay_end", wd)
    _check(wd_end >= 0, "weight_decay_end", wd_end, "use a value >= 0 (or None for constant)")
    clip = _get(config, "clip_grad_norm", 0.0)
    _check(clip >= 0, "clip_grad_norm", clip, "use a max global norm > 0, or 0 for no clipping")
    momentum = _get(config, "momentum", 0.9)
    _check(0 <= momentum < 1, "momentum", momentum, "use a value in [0, 1)")
    b1, b2 = _get(config, "b1", 0.9), _get(config, "b2", 0.999)
    _check(0 <= b1 < 1, "b1", b1, "use a value in [0, 1)")
    _check(0 <= b2 < 1, "b2", b2, "use a value in [0, 1), e.g. 0.95 for MAE")
    eps = _get(config, "eps", 1e-6 if name == "lamb" else 1e-8)
    _check(eps >= 0, "eps", eps, "use a value >= 0")
    nesterov = bool(_get(config, "nesterov", False))
    freeze_pattern = _get(config, "freeze_pattern", "")
    freeze_steps = _get(config, "freeze_steps", 0)
    _check(isinstance(freeze_steps, int) and freeze_steps >= 0, "freeze_steps", freeze_steps,
           "use an int >= 0")
    if freeze_pattern:
        try:
            re.compile(freeze_pattern)
        except re.error as e:
            raise ValueError(
                f"config.optim.freeze_pattern={freeze_pattern!r} is not a valid regex ({e}); "
                "fix the pattern"
            ) from None

    peak = peak_learning_rate(float(base_lr), global_batch, scaling)
    end = end_factor * peak
    schedule = _schedule(kind, peak, end, warmup, total_steps)
    wd_value = wd
    if wd_end != wd:
        wd = cosine_weight_decay(float(wd), float(wd_end), total_steps)

    if name == "lars":
        tc = _get(config, "trust_coefficient", 0.001)
        _check(tc > 0, "trust_coefficient", tc, "use a value > 0 (0.001 in SimCLR/BYOL)")
        core = optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                          trust_coefficient=tc, eps=0.0, trust_ratio_mask=decay_mask,
                          momentum=momentum, nesterov=nesterov)
    elif name == "lamb":
        core = optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
    elif name == "adamw":
        core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
    elif name == "adam":
        core = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                           optax.adam(schedule, b1=b1, b2=b2, eps=eps))
    else:
        core = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                           optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))

    parts = []
    per_param = bool(_get(config, "clip_per_param", False))
    if clip > 0:
        parts.append(clip_each_by_norm(clip) if per_param else optax.clip_by_global_norm(clip))
    freezing = bool(freeze_pattern) and freeze_steps > 0
    if freezing:
        # Zero the gradient (no momentum/moment build-up) and the final update (no decay).
        parts.append(optax.masked(zero_updates_until(freeze_steps), path_mask(freeze_pattern)))
    parts.append(core)
    if freezing:
        parts.append(optax.masked(zero_updates_until(freeze_steps), path_mask(freeze_pattern)))
    tx = optax.chain(*parts) if len(parts) > 1 else core

    info = {
        "optimizer": name, "base_lr": float(base_lr), "lr_scaling": scaling,
        "global_batch": global_batch, "peak_lr": peak, "end_lr": end, "schedule": kind,
        "warmup_steps": warmup, "total_steps": total_steps, "weight_decay": wd_value,
        "weight_decay_end": wd_end, "clip_grad_norm": clip, "clip_per_param": per_param,
        "freeze_pattern": freeze_pattern,
        "freeze_steps": freeze_steps if freezing else 0,
    }
    return tx, schedule, info
