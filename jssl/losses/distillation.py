"""Self-distillation losses without negatives: BYOL and DINO; distillation from a fixed
(ensemble) teacher's class probabilities.

The target/teacher side always carries a stop-gradient: no gradient reaches the
EMA network through these losses. Both are per-example losses; with
``axis_name`` set (inside ``shard_map``) the mean is taken over the global
batch, so value and gradient equal the global computation. ``dino_update_center``
is the one cross-device *state* update: the batch mean of the teacher outputs
over all devices.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jssl.losses._common import (
    AxisName,
    as_f32,
    check_ndim,
    check_positive,
    check_same_shape,
    global_mean,
    l2_normalize,
    psum,
)


def byol(prediction: jax.Array, target: jax.Array, *, axis_name: AxisName = None) -> jax.Array:
    """BYOL regression loss (Grill et al. 2020, eq. 2).

        l_i = ‖p̄_i − z̄_i‖² = 2 − 2 · cos(p_i, sg(z_i))

    with p̄, z̄ the L2-normalised online prediction and target projection.
    Reduction: mean over the (global) batch. The symmetrised BYOL objective is the
    sum of this loss over the two view orderings (the method does that).

    Args:
      prediction: [B, D] online predictor output.
      target: [B, D] target-network projection (stop-gradient applied here).
    """
    check_ndim("prediction", prediction, 2, "[batch, dim]")
    check_same_shape("prediction", prediction, "target", target)
    p = l2_normalize(prediction)
    z = jax.lax.stop_gradient(l2_normalize(target))
    losses = 2.0 - 2.0 * jnp.sum(p * z, axis=-1)
    return global_mean(jnp.sum(losses), prediction.shape[0], axis_name)


def _as_views(name: str, x) -> list[jax.Array]:
    views = list(x) if isinstance(x, Sequence) else [x[i] for i in range(x.shape[0])]
    if not views:
        raise ValueError(f"{name} is empty; pass a list of [batch, out_dim] arrays, one per crop")
    for i, v in enumerate(views):
        check_ndim(f"{name}[{i}]", v, 2, "[batch, out_dim]")
        check_same_shape(f"{name}[0]", views[0], f"{name}[{i}]", v)
    return views


def dino(
    student_logits: Sequence[jax.Array] | jax.Array,
    teacher_logits: Sequence[jax.Array] | jax.Array,
    center: jax.Array,
    student_temp: float = 0.1,
    teacher_temp: float | jax.Array = 0.04,
    *,
    axis_name: AxisName = None,
) -> jax.Array:
    """DINO self-distillation cross-entropy over multi-crop views (Caron et al. 2021, Alg. 1).

    The teacher sees the G global crops only; the student sees all V crops, the
    global ones first (so student view v and teacher view v are the same crop for
    v < G). For each teacher view g and student view v ≠ g:

        H(g, v) = −mean_b Σ_k softmax((t_g − c)/τ_t)_bk · log_softmax(s_v/τ_s)_bk

    loss = Σ_{g, v≠g} H(g, v) / #pairs, #pairs = G·V − G. The teacher term is
    centred, sharpened and stop-gradient; the mean over b is global.

    Args:
      student_logits: V arrays [B, K] (a list, or an array [V, B, K]).
      teacher_logits: G ≤ V arrays [B, K].
      center: [K] or [1, K] running mean of teacher outputs.
      student_temp: τ_s > 0 (0.1).
      teacher_temp: τ_t > 0 (0.04 warming up to 0.07; may be a traced schedule value).
    """
    students = _as_views("student_logits", student_logits)
    teachers = _as_views("teacher_logits", teacher_logits)
    check_same_shape("student_logits[0]", students[0], "teacher_logits[0]", teachers[0])
    if len(teachers) > len(students) or len(students) < 2:
        raise ValueError(
            f"dino needs ≥ 2 student views and no more teacher views than student views, got "
            f"{len(students)} student and {len(teachers)} teacher views; pass the global crops "
            f"first in student_logits"
        )
    k = students[0].shape[-1]
    if jnp.shape(center) not in ((k,), (1, k)):
        raise ValueError(f"center must have shape ({k},) or (1, {k}), got {jnp.shape(center)}")
    check_positive("student_temp", student_temp, "use 0.1 as in DINO")
    check_positive("teacher_temp", teacher_temp, "use 0.04–0.07 as in DINO")
    c = jax.lax.stop_gradient(as_f32(center).reshape(1, k))
    targets = [
        jax.nn.softmax(jax.lax.stop_gradient((as_f32(t) - c) / teacher_temp), axis=-1)
        for t in teachers
    ]
    log_probs = [jax.nn.log_softmax(as_f32(s) / student_temp, axis=-1) for s in students]
    total, pairs = 0.0, 0
    for g, tgt in enumerate(targets):
        for v, lp in enumerate(log_probs):
            if v == g:
                continue
            total = total + jnp.sum(-jnp.sum(tgt * lp, axis=-1))
            pairs += 1
    return global_mean(total, students[0].shape[0], axis_name) / pairs


def dino_update_center(
    center: jax.Array,
    teacher_logits: Sequence[jax.Array] | jax.Array,
    momentum: float = 0.9,
    *,
    axis_name: AxisName = None,
) -> jax.Array:
    """DINO centre update: c ← m·c + (1 − m)·mean(teacher outputs).

    The mean runs over every teacher view and every example of the *global*
    batch (a ``psum`` across devices, as DINO's ``dist.all_reduce``). Returns an
    array of the same shape and dtype as ``center``; no gradient flows.
    """
    teachers = _as_views("teacher_logits", teacher_logits)
    k = teachers[0].shape[-1]
    if jnp.shape(center) not in ((k,), (1, k)):
        raise ValueError(f"center must have shape ({k},) or (1, {k}), got {jnp.shape(center)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}; DINO uses 0.9")
    local_sum = sum(jnp.sum(as_f32(t), axis=0) for t in teachers)
    count = psum(jnp.float32(len(teachers) * teachers[0].shape[0]), axis_name)
    batch_center = jax.lax.stop_gradient(psum(local_sum, axis_name) / count)
    new = momentum * as_f32(center) + (1.0 - momentum) * batch_center.reshape(jnp.shape(center))
    return new.astype(center.dtype)


def knowledge_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float = 1.0,
    *,
    axis_name: AxisName = None,
) -> jax.Array:
    """Distillation cross-entropy from a fixed teacher's class probabilities (Hinton et al.
    2015; SimCLRv2's self-distillation on unlabelled images, Chen et al. 2020b, eq. 2).

        l_b = −Σ_k P^T_bk · log P^S_bk,   P^T = softmax(sg(t)/τ),  P^S = softmax(s/τ)

    No τ² factor (eq. 2 of SimCLRv2; with τ = 1, as there, the two conventions agree).
    Reduction: mean over the (global) batch; all axes but the last are batch axes.

    Args:
      student_logits: [..., K] class scores of the network being trained.
      teacher_logits: [..., K] the frozen teacher's scores for the same inputs
        (stop-gradient applied here).
      temperature: τ > 0 (1.0 in SimCLRv2).
    """
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if student_logits.ndim < 2:
        raise ValueError(f"student_logits must be [..., num_classes], got shape "
                         f"{student_logits.shape}; pass one row of class scores per example")
    check_positive("temperature", temperature, "use 1.0 as in SimCLRv2")
    target = jax.nn.softmax(jax.lax.stop_gradient(as_f32(teacher_logits)) / temperature, -1)
    log_p = jax.nn.log_softmax(as_f32(student_logits) / temperature, axis=-1)
    per_example = -jnp.sum(target * log_p, axis=-1)
    return global_mean(jnp.sum(per_example), per_example.size, axis_name)


def ensemble_logits(teacher_logits: Sequence[jax.Array], temperature: float = 1.0) -> jax.Array:
    """Scores of an ensemble teacher (Hinton et al. 2015, §2: distilling an ensemble into
    one model): the mean of the E members' tempered class probabilities, as logits,

        ℓ = τ · log( (1/E) Σ_e softmax(t_e / τ) ),   so   softmax(ℓ / τ) = (1/E) Σ_e P^T_e

    and ``knowledge_distillation(s, ℓ, τ)`` is the cross-entropy to the ensemble's mean
    probabilities. Computed with a logsumexp over members (no log of a small mean).
    Per example: no reduction, no cross-device communication.

    Args:
      teacher_logits: E ≥ 1 arrays [..., K] of the members' scores for the same inputs.
      temperature: τ > 0, the same as the distillation loss's.
    """
    if not teacher_logits:
        raise ValueError("teacher_logits is empty; pass the scores of at least one teacher")
    for i, t in enumerate(teacher_logits[1:], 1):
        check_same_shape("teacher_logits[0]", teacher_logits[0], f"teacher_logits[{i}]", t)
    check_positive("temperature", temperature, "use the distillation loss's temperature")
    log_p = jnp.stack([jax.nn.log_softmax(as_f32(t) / temperature, axis=-1)
                       for t in teacher_logits])
    return temperature * (jax.nn.logsumexp(log_p, axis=0) - jnp.log(len(teacher_logits)))
