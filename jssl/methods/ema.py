"""Exponential moving averages of parameters: BYOL's target network, MoCo's key encoder.

    θ_target ← τ·θ_target + (1 − τ)·θ_online                    (leaf by leaf, float32)
    τ_k = end − (end − base)·(cos(π·k/K) + 1)/2                    (BYOL, Grill et al. 2020, §3.2)

With ``end = 1`` the schedule is BYOL's ``τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2``: τ_base at
step 0, 1 at the last step K, so the target freezes as training ends. Both functions are pure
and jittable (``step`` may be traced).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_update(target: Any, online: Any, tau: float | jax.Array) -> Any:
    """``τ·target + (1 − τ)·online`` for every leaf, computed and returned in float32.

    ``target`` and ``online`` must have the same tree structure (the target is a copy of
    part of the online network). τ = 1 keeps the target, τ = 0 copies the online weights.
    """
    if isinstance(tau, int | float) and not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau={tau} must be in [0, 1]; BYOL uses 0.99–1, MoCo 0.999")
    tau = jnp.asarray(tau, jnp.float32)

    def one(t: jax.Array, o: jax.Array) -> jax.Array:
        t, o = jnp.asarray(t, jnp.float32), jax.lax.stop_gradient(jnp.asarray(o, jnp.float32))
        return tau * t + (1.0 - tau) * o

    return jax.tree.map(one, target, online)


def cosine_tau(step: int | jax.Array, total_steps: int, base: float = 0.99,
               end: float = 1.0) -> jax.Array:
    """BYOL's cosine EMA schedule: ``base`` at step 0, ``end`` at ``total_steps``, float32.

    Steps past ``total_steps`` stay at ``end``.
    """
    if not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"total_steps={total_steps!r} must be a positive int "
                         f"(config.train.steps)")
    if not 0.0 <= base <= end <= 1.0:
        raise ValueError(f"cosine_tau needs 0 <= base <= end <= 1, got base={base}, end={end}; "
                         f"BYOL uses base=0.99 or 0.996, end=1")
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    return jnp.float32(end) - jnp.float32(end - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
