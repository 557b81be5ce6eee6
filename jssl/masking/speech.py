"""Speech pretext targets: wav2vec 2.0 span masking.

See ``jssl.masking`` for the conventions (pure, jittable, key handling).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jssl.masking._common import (
    _batched,
    _check_batch_size,
    _check_int,
    _check_open_unit,
    _typed_key,
)


# ------------------------------------------------------------------- wav2vec 2.0
def span_mask(
    key: jax.Array,
    length: int,
    prob: float = 0.65,
    span: int = 10,
    min_masks: int = 2,
    batch_size: int | None = None,
) -> jax.Array:
    """wav2vec 2.0 time masking (``compute_mask_indices``, ``mask_type="static"``).

    Per row: ``num_spans = max(min_masks, int(prob * length / span + u))`` with
    ``u ~ U[0, 1)`` (fairseq's probabilistic rounding; wav2vec 2.0 passes
    ``min_masks=2``), capped at the ``length - span + 1`` possible starts. Starts are
    drawn without replacement from ``[0, length - span]`` and each masks ``span``
    steps. Spans may overlap, so the masked fraction is below ``prob`` (about 0.49
    of the steps for prob 0.65, span 10, length 500); every maximal masked run is at
    least ``span`` long.

    Deviations from fairseq: starts include ``length - span`` (fairseq draws from
    ``[0, length - span)`` and so never masks the last step; HF transformers
    includes it, as here); fairseq's ``require_same_masks`` (trim every row to the
    batch's smallest masked count by unmasking random steps, needed there to gather
    a dense tensor) is not done: counts differ per row and the mask is the weight.

    Returns:
      bool ``[length]`` (or ``[B, length]`` with ``batch_size``), True = masked.
    """
    length = _check_int("length", length, 1, "pass the number of time steps")
    _check_open_unit("prob", prob, "wav2vec 2.0 uses prob=0.65")
    span = _check_int("span", span, 1, "wav2vec 2.0 uses span=10")
    if span > length:
        raise ValueError(f"span={span} is longer than length={length}; pass span <= length")
    min_masks = _check_int("min_masks", min_masks, 0, "wav2vec 2.0 uses 2")
    batch_size = _check_batch_size(batch_size)
    return _span_impl(_typed_key(key), length=length, prob=float(prob), span=span,
                      min_masks=min_masks, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("length", "prob", "span", "min_masks",
                                             "batch_size"))
def _span_impl(key, *, length, prob, span, min_masks, batch_size):
    num_starts = length - span + 1
    expected = prob * length / span

    def one(k):
        k_round, k_starts = jax.random.split(k)
        num = jnp.floor(expected + jax.random.uniform(k_round)).astype(jnp.int32)
        num = jnp.clip(num, min_masks, num_starts)
        rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_starts, (num_starts,))))
        start = (rank < num).astype(jnp.int32)
        # Step t is masked when a span starts in [t - span + 1, t].
        c = jnp.cumsum(jnp.concatenate([start, jnp.zeros((span - 1,), jnp.int32)]))
        c = jnp.concatenate([jnp.zeros((span,), jnp.int32), c])
        return (c[span:] - c[:-span]) > 0

    return _batched(one, key, batch_size)
