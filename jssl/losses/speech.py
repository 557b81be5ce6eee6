"""wav2vec 2.0 losses (Baevski et al. 2020): the contrastive task and codebook diversity.

Follows fairseq ``models/wav2vec/wav2vec2.py`` (``sample_negatives``,
``compute_preds``, ``prob_perplexity``), with static shapes so everything jits:

* Distractors are drawn per utterance from its *other* masked steps: the masked
  positions of a row are sorted to the front (a stable argsort), each masked step
  of rank r draws K ranks uniformly from {0 .. n-2} and shifts ranks ≥ r by one,
  so it never draws itself; a rank maps back to a time step through the sort.
* The draws of utterance b use the key ``fold_in(rng, b)`` with b its *global*
  row index (``axis_index · local_batch + local_row`` inside ``shard_map``), so
  the distractors, hence the loss and its gradient, do not depend on how the batch
  is split over devices. Pass the same ``rng`` on every device.

Cosine similarities and logits are computed in float32 at HIGHEST precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import (
    PRECISION,
    AxisName,
    as_f32,
    axis_index,
    axis_size,
    check_ndim,
    check_positive,
    check_same_shape,
    l2_normalize,
    psum,
)

_COS_EPS = 1e-8  # cos(a, b) = a·b / (max(|a|, eps) · max(|b|, eps)), as torch.cosine_similarity
_PPL_EPS = 1e-7  # fairseq: exp(-Σ p log(p + 1e-7)), keeps the gradient finite at p = 0
_EMPTY = 1e-8  # lower bound of every count denominator (no masked step gives 0, not NaN)


def _check_mask(mask_indices: jax.Array, batch_time: tuple[int, ...]) -> None:
    if tuple(jnp.shape(mask_indices)) != tuple(batch_time):
        raise ValueError(
            f"mask_indices has shape {tuple(jnp.shape(mask_indices))} but must have shape "
            f"{tuple(batch_time)} (the [batch, time] of context); pass one flag per frame"
        )


def sample_negatives(
    rng: jax.Array, mask_indices: jax.Array, num_negatives: int, *, axis_name: AxisName = None
) -> jax.Array:
    """Distractor time indices for every step: int32 [B, T, K].

    For a masked step t of utterance b with n_b masked steps, the K indices are drawn
    uniformly with replacement from the other n_b - 1 masked steps of the same
    utterance (fairseq ``sample_negatives``, ``cross_sample_negatives=0``); a rank is
    32 random bits modulo n_b - 1, whose bias (< n_b / 2³²) is negligible. Rows with
    n_b < 2 and unmasked steps get arbitrary valid indices in [0, T); the loss gives
    them zero weight. Row b uses ``fold_in(rng, global_row_index)``, so 1 and N
    devices draw the same indices.

    Args:
      rng: a PRNG key (the same on every device).
      mask_indices: [B, T] bool, True at masked steps.
      num_negatives: K >= 1.
      axis_name: mesh axis when called inside ``shard_map`` (rows sharded on axis 0).
    """
    check_ndim("mask_indices", mask_indices, 2, "[batch, time]")
    check_positive("num_negatives", num_negatives, "pass e.g. num_negatives=100")
    b, t = jnp.shape(mask_indices)
    mask = jnp.asarray(mask_indices).astype(bool)
    rows = axis_index(axis_name) * b + jnp.arange(b)

    def one_row(row: jax.Array, m: jax.Array) -> jax.Array:
        n = jnp.sum(m.astype(jnp.int32))
        order = jnp.argsort(~m, stable=True)  # masked steps first, in time order
        rank = jnp.cumsum(m.astype(jnp.int32)) - 1  # rank of step t among masked steps
        bits = jax.random.bits(jax.random.fold_in(rng, row), (t, num_negatives))
        draw = (bits % jnp.maximum(n - 1, 1).astype(jnp.uint32)).astype(jnp.int32)
        draw = jnp.where(draw >= rank[:, None], draw + 1, draw)
        return order[jnp.minimum(draw, t - 1)].astype(jnp.int32)

    return jax.vmap(one_row)(rows, mask)


def wav2vec2_logits(
    context: jax.Array, quantized: jax.Array, negatives: jax.Array, temperature: float
) -> jax.Array:
    """[B, T, 1 + K] float32 logits cos(c_t, [q_t, q_n1 .. q_nK]) / temperature.

    As in fairseq ``compute_preds``, a distractor whose vector equals the positive
    q_t exactly gets logit -inf (it cannot be told apart from the positive).
    Cost: one [T, T] cosine matrix per utterance (a batched matmul, gathered at the
    distractor indices) and a B·T·K·D equality test, the size of fairseq's negatives.

    Args:
      context: [B, T, D]; quantized: [B, T, D]; negatives: int [B, T, K] time indices
        into the same utterance (``sample_negatives``); temperature: κ > 0.
    """
    c = l2_normalize(context, eps=_COS_EPS)
    q = l2_normalize(quantized, eps=_COS_EPS)
    sim = jnp.einsum("btd,bsd->bts", c, q, precision=PRECISION)  # [B, T, T]
    pos = jnp.diagonal(sim, axis1=1, axis2=2)[..., None]
    neg = jnp.take_along_axis(sim, negatives, axis=2)
    qs = jax.lax.stop_gradient(quantized)
    neg_vecs = jax.vmap(lambda qb, ib: qb[ib])(qs, negatives)  # [B, T, K, D]
    neg_is_pos = jnp.all(neg_vecs == qs[:, :, None, :], axis=-1)
    neg = jnp.where(neg_is_pos, -jnp.inf, neg / temperature)
    return jnp.concatenate([pos / temperature, neg], axis=-1)


def wav2vec2(
    context: jax.Array,
    quantized: jax.Array,
    mask_indices: jax.Array,
    rng: jax.Array,
    *,
    num_negatives: int = 100,
    temperature: float = 0.1,
    return_metrics: bool = False,
    axis_name: AxisName = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """wav2vec 2.0 contrastive loss over masked time steps.

    For masked step t of utterance b with distractors n_1..n_K (``sample_negatives``):

        ℓ_bt = -log exp(cos(c_t, q_t)/κ) / (exp(cos(c_t, q_t)/κ) + Σ_k exp(cos(c_t, q_nk)/κ))

    with distractors equal to q_t dropped (logit -inf). Reduction: mean of ℓ_bt over
    the masked steps of the global batch whose utterance has at least 2 masked
    steps (rows with fewer have no distractor and contribute nothing); the sum and
    the count are psum'ed, the count is clamped to 1e-8. Gradients flow into both
    ``context`` and ``quantized`` (positives and distractors), as in fairseq.

    Args:
      context: [B, T, D] transformer outputs projected to the final dim.
      quantized: [B, T, D] quantized targets projected to the final dim.
      mask_indices: [B, T] bool, True at masked steps.
      rng: PRNG key for the distractors, the same on every device.
      num_negatives: K distractors per masked step (fairseq: 100).
      temperature: κ > 0 (fairseq ``logit_temp`` 0.1).
      return_metrics: also return ``{"accuracy", "count"}``: the fraction of counted
        steps whose positive logit is strictly above every distractor logit, and the
        global number of counted steps.
      axis_name: mesh axis when called inside ``shard_map`` (rows sharded on axis 0).
    """
    check_ndim("context", context, 3, "[batch, time, dim]")
    check_same_shape("context", context, "quantized", quantized)
    _check_mask(mask_indices, jnp.shape(context)[:2])
    check_positive("temperature", temperature, "pass a positive temperature such as 0.1")
    mask = jnp.asarray(mask_indices).astype(bool)
    negatives = sample_negatives(rng, mask, num_negatives, axis_name=axis_name)
    logits = wav2vec2_logits(context, quantized, negatives, temperature)
    ce = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]
    enough = jnp.sum(mask, axis=1, keepdims=True) >= 2
    w = (mask & enough).astype(jnp.float32)
    count = psum(jnp.sum(w), axis_name)
    loss = psum(jnp.sum(jnp.where(w > 0, ce, 0.0)), axis_name) / jnp.maximum(count, _EMPTY)
    if not return_metrics:
        return loss
    correct = logits[..., 0] > jnp.max(logits[..., 1:], axis=-1)
    hits = psum(jnp.sum(w * correct), axis_name)
    accuracy = jax.lax.stop_gradient(hits / jnp.maximum(count, _EMPTY))
    return loss, {"accuracy": accuracy, "count": jax.lax.stop_gradient(count)}


def _mean_probs(probs: jax.Array, mask: jax.Array | None, axis_name: AxisName) -> jax.Array:
    """p̄ [G, V]: mean of probs over all frame axes of the global batch."""
    if jnp.ndim(probs) < 3:
        raise ValueError(
            f"probs must have shape [frames..., groups, entries] (>= 3 dims), got shape "
            f"{tuple(jnp.shape(probs))}; add the frame/batch axes"
        )
    p = as_f32(probs)
    frames = tuple(range(p.ndim - 2))
    if mask is None:
        local = jnp.sum(p, axis=frames)
        count = float(p.size // (p.shape[-1] * p.shape[-2])) * axis_size(axis_name)
        return psum(local, axis_name) / count
    if tuple(jnp.shape(mask)) != tuple(p.shape[:-2]):
        raise ValueError(
            f"mask has shape {tuple(jnp.shape(mask))} but must have shape {p.shape[:-2]} "
            f"(the frame axes of probs); pass one weight per frame"
        )
    m = as_f32(mask)
    local = jnp.sum(p * m[..., None, None], axis=frames)
    count = psum(jnp.sum(m), axis_name)
    return psum(local, axis_name) / jnp.maximum(count, _EMPTY)


def codebook_perplexity(
    probs: jax.Array, *, mask: jax.Array | None = None, axis_name: AxisName = None
) -> jax.Array:
    """Summed codebook perplexity, fairseq ``prob_perplexity``.

        p̄_g = mean over frames of probs[..., g, :]
        PPL = Σ_g exp(-Σ_v p̄_gv log(p̄_gv + 1e-7))

    The mean runs over all leading (frame) axes of the global batch: psum of the
    per-device sums over the global frame count, or with ``mask`` [frames...] the
    mask-weighted mean (sums and weight total psum'ed; total clamped to 1e-8).
    The 1e-7 inside the log is fairseq's; PPL ranges from ~G (collapse) to G·V.

    Args:
      probs: [..., G, V] softmax probabilities of the quantizer, per frame.
      mask: optional [...] frame weights (e.g. non-padding frames); None = all frames.
      axis_name: mesh axis when called inside ``shard_map`` (frames sharded on axis 0).
    """
    p_bar = _mean_probs(probs, mask, axis_name)
    return jnp.sum(jnp.exp(-jnp.sum(p_bar * jnp.log(p_bar + _PPL_EPS), axis=-1)))


def codebook_diversity(
    probs: jax.Array, *, mask: jax.Array | None = None, axis_name: AxisName = None
) -> jax.Array:
    """wav2vec 2.0 diversity loss: (G·V - PPL) / (G·V), PPL = ``codebook_perplexity``.

    0 when every entry of every group is used equally on average, (G·V - G)/(G·V)
    when each group always picks one entry. Same reduction and arguments as
    ``codebook_perplexity``.
    """
    ppl = codebook_perplexity(probs, mask=mask, axis_name=axis_name)
    num_vars = jnp.shape(probs)[-1] * jnp.shape(probs)[-2]
    return (num_vars - ppl) / num_vars
