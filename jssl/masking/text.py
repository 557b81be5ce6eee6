"""Text pretext targets: BERT masked-LM corruption and T5 span corruption.

See ``jssl.masking`` for the conventions (pure, jittable, key handling).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from numbers import Real

import jax
import jax.numpy as jnp

from jssl.masking._common import (
    _check_int,
    _check_int_tokens,
    _check_open_unit,
    _typed_key,
)


# ------------------------------------------------------------------------ BERT
def _uniform_excluding(key, shape, vocab_size: int, excluded: Sequence[int]) -> jax.Array:
    """Uniform ids in [0, vocab_size) minus ``excluded`` (sorted, unique, in range).

    Draw r in [0, vocab_size - len(excluded)) and step over each excluded id in
    ascending order: r -> r + 1 whenever r >= that id. This is a bijection onto the
    allowed ids, so the draw stays uniform.
    """
    r = jax.random.randint(key, shape, 0, vocab_size - len(excluded), dtype=jnp.int32)
    for e in excluded:
        r = r + (r >= e).astype(r.dtype)
    return r


def bert_mask(
    tokens: jax.Array,
    key: jax.Array,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    rate: float = 0.15,
    *,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BERT masked-language-model corruption, as HF ``DataCollatorForLanguageModeling``.

    Each position whose token is not in ``special_ids`` is chosen independently with
    probability ``rate`` (Bernoulli, so the count per row varies). Of the chosen
    positions, ``mask_replace_prob`` (80 %) become ``mask_id``, ``random_replace_prob``
    (10 %) become a random token, and the rest (10 %) keep their token. The random
    token is uniform over ``[0, vocab_size)`` minus ``special_ids`` and ``mask_id``
    (HF draws over the whole vocabulary, specials included); it can equal the
    original token with probability ~1/vocab_size.

    Args:
      tokens: int ``[..., T]`` token ids (any leading shape; every row independent).
      key: PRNG key.
      vocab_size: number of ids; random replacements are drawn below it.
      mask_id: the ``[MASK]`` id.
      special_ids: ids never chosen: CLS/SEP/BOS/EOS and the padding id.
      rate: selection probability, in (0, 1).
      mask_replace_prob, random_replace_prob: split of the chosen positions.

    Returns:
      ``(inputs, labels, weights)``: ``inputs`` the corrupted tokens (dtype of
      ``tokens``); ``labels`` the original tokens everywhere (not -100 as in HF);
      ``weights`` float32, 1.0 at chosen positions and 0.0 elsewhere. The MLM loss is
      ``sum(weights * ce(logits, labels)) / max(sum(weights), 1)``.
    """
    tokens = jnp.asarray(tokens)
    _check_int_tokens("tokens", tokens)
    if tokens.ndim < 1:
        raise ValueError(f"tokens must have shape [..., T], got a scalar {tokens.shape}")
    vocab_size = _check_int("vocab_size", vocab_size, 1, "pass the tokenizer's vocabulary size")
    _check_open_unit("rate", rate, "BERT uses rate=0.15")
    for name, p in (("mask_replace_prob", mask_replace_prob),
                    ("random_replace_prob", random_replace_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}; BERT uses 0.8 and 0.1")
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError(
            f"mask_replace_prob + random_replace_prob must be <= 1, got "
            f"{mask_replace_prob} + {random_replace_prob}; the remainder stays unchanged"
        )
    special = tuple(sorted({int(s) for s in special_ids}))
    excluded = tuple(sorted({s for s in (*special, int(mask_id)) if 0 <= s < vocab_size}))
    if random_replace_prob > 0 and len(excluded) >= vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no id that is not special or mask_id to draw "
            f"random replacements from; pass a larger vocab_size or random_replace_prob=0"
        )
    return _bert_impl(tokens, _typed_key(key), vocab_size=vocab_size, mask_id=int(mask_id),
                      special=special, excluded=excluded, rate=float(rate),
                      mask_replace_prob=float(mask_replace_prob),
                      random_replace_prob=float(random_replace_prob))


@functools.partial(jax.jit, static_argnames=("vocab_size", "mask_id", "special", "excluded",
                                             "rate", "mask_replace_prob", "random_replace_prob"))
def _bert_impl(tokens, key, *, vocab_size, mask_id, special, excluded, rate, mask_replace_prob,
               random_replace_prob):
    k_choose, k_action, k_random = jax.random.split(key, 3)
    if special:
        eligible = ~jnp.isin(tokens, jnp.asarray(special, dtype=tokens.dtype))
    else:
        eligible = jnp.ones(tokens.shape, bool)
    chosen = (jax.random.uniform(k_choose, tokens.shape) < rate) & eligible
    u = jax.random.uniform(k_action, tokens.shape)
    to_mask = chosen & (u < mask_replace_prob)
    to_random = chosen & ~to_mask & (u < mask_replace_prob + random_replace_prob)
    if random_replace_prob > 0:
        random_tokens = _uniform_excluding(k_random, tokens.shape, vocab_size, excluded)
        inputs = jnp.where(to_random, random_tokens.astype(tokens.dtype), tokens)
    else:
        inputs = tokens
    inputs = jnp.where(to_mask, jnp.asarray(mask_id, tokens.dtype), inputs)
    return inputs, tokens, chosen.astype(jnp.float32)


# -------------------------------------------------------------------------- T5
def _t5_counts(n: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(num_noise, num_noise_spans) for a row of ``n`` real tokens, as seqio.

    seqio computes the counts for ``max(n, 2)`` tokens and crops the mask to ``n``;
    for n = 1 that leaves no noise. We also cap the spans at the non-noise count so
    spans always alternate (seqio assumes it; it only binds for extreme settings).
    """
    if n < 2:
        return 0, 0
    num_noise = min(max(round(n * noise_density), 1), n - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    return num_noise, min(num_spans, n - num_noise)


def _t5_row_lengths(n: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    num_noise, num_spans = _t5_counts(n, noise_density, mean_span_length)
    nonnoise = n - num_noise
    # A row with no noise still gets one sentinel in the targets (for its one span).
    nonnoise_spans = num_spans if num_spans > 0 else int(nonnoise > 0)
    return nonnoise + num_spans, num_noise + nonnoise_spans


def _check_t5_args(length, noise_density, mean_span_length) -> int:
    length = _check_int("length", length, 2, "span corruption needs at least 2 tokens per row")
    _check_open_unit("noise_density", noise_density, "T5 uses noise_density=0.15")
    if not isinstance(mean_span_length, Real) or not mean_span_length >= 1.0:
        raise ValueError(
            f"mean_span_length must be a number >= 1, got {mean_span_length!r}; T5 uses 3.0"
        )
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    if num_spans > length - num_noise:
        raise ValueError(
            f"noise_density={noise_density} with mean_span_length={mean_span_length} asks for "
            f"{num_spans} noise spans but a {length}-token row has only {length - num_noise} "
            f"non-noise tokens to separate them; lower noise_density or raise mean_span_length"
        )
    return length


def t5_output_lengths(
    length: int, noise_density: float = 0.15, mean_span_length: float = 3.0, *, eos: bool = False
) -> tuple[int, int]:
    """Static ``(inputs_length, targets_length)`` of ``t5_span_corruption`` for ``length``.

    With ``num_noise = clip(round(length * noise_density), 1, length - 1)`` and
    ``num_spans = max(round(num_noise / mean_span_length), 1)``: inputs hold
    ``length - num_noise + num_spans`` ids and targets ``num_noise + num_spans``;
    ``eos=True`` adds one to each (the EOS appended when ``eos_id`` is given).
    Shorter (padded) rows fit inside these lengths.
    """
    length = _check_t5_args(length, noise_density, mean_span_length)
    lengths = [_t5_row_lengths(n, noise_density, mean_span_length) for n in range(length + 1)]
    return (max(a for a, _ in lengths) + int(eos), max(b for _, b in lengths) + int(eos))


def t5_raw_length(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    *,
    eos: bool = True,
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: the raw row length whose corrupted inputs fill
    ``inputs_length``, and the matching targets length; ``(568, 114)`` for 512 with
    EOS. Pack raw rows to that length, corrupt them, and the inputs come out full."""
    inputs_length = _check_int("inputs_length", inputs_length, 2 + int(eos), "pass e.g. 512")
    length = max(inputs_length - 1, 2)
    while t5_output_lengths(length + 1, noise_density, mean_span_length, eos=eos)[0] <= (
        inputs_length
    ):
        length += 1
    targets_length = t5_output_lengths(length, noise_density, mean_span_length, eos=eos)[1]
    if noise_density == 0.5 and targets_length > inputs_length:  # as random_spans_helper
        length, targets_length = length - 1, targets_length - 1
    return length, targets_length


def _random_segmentation(key, num_items, num_segments, max_items: int, max_segments: int):
    """Lengths [max_segments] of a uniformly random composition of ``num_items``
    (traced, <= max_items) into ``num_segments`` (traced) positive parts; entries
    beyond ``num_segments`` are 0. As seqio: choose ``num_segments - 1`` of the
    ``num_items - 1`` gaps between items at random and cut there."""
    gap = jnp.arange(max_items - 1)
    u = jnp.where(gap < num_items - 1, jax.random.uniform(key, (max_items - 1,)), 2.0)
    rank = jnp.argsort(jnp.argsort(u))
    cut = rank < num_segments - 1
    segment_id = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32), cut.astype(jnp.int32)]))
    item_valid = (jnp.arange(max_items) < num_items).astype(jnp.int32)
    return jnp.zeros((max_segments,), jnp.int32).at[segment_id].add(item_valid, mode="drop")


def _span_to_sentinel(tokens, span_mask, valid, sentinel_start: int, out_len: int, fill: int,
                      eos_id: int | None):
    """seqio ``noise_span_to_unique_sentinel``: each run of ``span_mask`` becomes one
    sentinel (counting down from ``sentinel_start``); compacted, padded to out_len."""
    prev = jnp.concatenate([jnp.zeros((1,), bool), span_mask[:-1]])
    first = span_mask & ~prev
    subsequent = span_mask & prev
    sentinel = sentinel_start + 1 - jnp.cumsum(first.astype(jnp.int32))
    values = jnp.where(first, sentinel.astype(tokens.dtype), tokens)
    keep = valid & ~subsequent
    pos = jnp.cumsum(keep.astype(jnp.int32)) - 1
    out = jnp.full((out_len,), fill, tokens.dtype)
    out = out.at[jnp.where(keep, pos, out_len)].set(values, mode="drop")
    if eos_id is not None:
        out = out.at[jnp.sum(keep)].set(jnp.asarray(eos_id, tokens.dtype), mode="drop")
    return out


def t5_span_corruption(
    tokens: jax.Array,
    key: jax.Array,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    *,
    sentinel_start: int,
    pad_id: int = 0,
    eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """T5 span corruption with seqio semantics, at static output shapes.

    Per row of n real tokens: ``num_noise = clip(round(n * noise_density), 1, n - 1)``,
    ``num_spans = max(round(num_noise / mean_span_length), 1)``; the noise and the
    non-noise tokens are each split into ``num_spans`` positive-length spans by a
    uniformly random composition, and the spans alternate starting with non-noise
    (so the row ends with noise). Inputs replace each noise span with one sentinel;
    targets replace each non-noise span with one sentinel, followed by the dropped
    tokens: inputs ``a b <S0> e f <S1>`` / targets ``<S0> c d <S1> g``.

    Sentinels count DOWN from ``sentinel_start`` as in T5: the i-th span (from 0)
    uses ``sentinel_start - i``. For the T5 SentencePiece vocabulary,
    ``sentinel_start = vocab_size - 1 = 32099`` (``<extra_id_0>``). The caller keeps
    ordinary token ids clear of the sentinel range.

    Padding: a trailing run of ``pad_id`` is padding (n = L minus that run) and is
    never corrupted, so a real row must not end in ``pad_id``. Rows are normally
    packed to full length (``t5_raw_length`` gives the raw length whose inputs fill
    a model length); a shorter row gets its own counts from the formula above
    (spans capped at its non-noise count; a 1-token row gets no noise) and shorter
    outputs, padded with ``pad_id``.

    Args:
      tokens: int ``[L]`` or ``[B, L]`` (each row gets its own key from ``split``).
      key: PRNG key.
      noise_density: fraction of tokens dropped, in (0, 1).
      mean_span_length: mean noise-span length, >= 1.
      sentinel_start: id of the first sentinel.
      pad_id: padding id (input detection and output fill).
      eos_id: if given, EOS is appended to both outputs after their last id.

    Returns:
      ``(inputs, targets)`` of lengths ``t5_output_lengths(L, noise_density,
      mean_span_length, eos=eos_id is not None)``, with the batch axis if given one.
    """
    tokens = jnp.asarray(tokens)
    _check_int_tokens("tokens", tokens)
    if tokens.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape [L] or [B, L], got {tokens.shape}")
    length = _check_t5_args(tokens.shape[-1], noise_density, mean_span_length)
    sentinel_start = _check_int("sentinel_start", sentinel_start, 0,
                                "pass vocab_size - 1 (32099 for T5)")
    table = tuple(_t5_counts(n, noise_density, mean_span_length) for n in range(length + 1))
    max_spans = max(max(s for _, s in table), 1)
    if sentinel_start - (max_spans - 1) < 0:
        raise ValueError(
            f"sentinel_start={sentinel_start} cannot count down through {max_spans} sentinels "
            f"without going negative; pass vocab_size - 1 of a vocabulary with extra ids"
        )
    out_lens = t5_output_lengths(length, noise_density, mean_span_length,
                                 eos=eos_id is not None)
    return _t5_impl(tokens, _typed_key(key), table=table, out_lens=out_lens,
                    sentinel_start=sentinel_start, pad_id=int(pad_id),
                    eos_id=None if eos_id is None else int(eos_id))


@functools.partial(jax.jit, static_argnames=("table", "out_lens", "sentinel_start", "pad_id",
                                             "eos_id"))
def _t5_impl(tokens, key, *, table, out_lens, sentinel_start, pad_id, eos_id):
    length = tokens.shape[-1]
    in_len, tgt_len = out_lens
    max_spans = max(max(s for _, s in table), 1)
    noise_table = jnp.asarray([a for a, _ in table], jnp.int32)
    spans_table = jnp.asarray([s for _, s in table], jnp.int32)

    def one_row(row, row_key):
        is_pad = row == pad_id
        # n = L minus the trailing run of pad_id.
        n = length - jnp.sum(jnp.cumprod(is_pad[::-1].astype(jnp.int32)))
        num_noise, num_spans = noise_table[n], spans_table[n]
        k_noise, k_nonnoise = jax.random.split(row_key)
        noise_len = _random_segmentation(k_noise, num_noise, num_spans, length, max_spans)
        nonnoise_len = _random_segmentation(k_nonnoise, n - num_noise, num_spans, length,
                                            max_spans)
        # Noise span j starts after non-noise spans 0..j and noise spans 0..j-1.
        starts = jnp.cumsum(nonnoise_len) + jnp.cumsum(noise_len) - noise_len
        ends = starts + noise_len
        delta = jnp.zeros((length + 1,), jnp.int32)
        delta = delta.at[starts].add(1).at[ends].add(-1)  # zero-length spans cancel
        valid = jnp.arange(length) < n
        is_noise = (jnp.cumsum(delta)[:length] > 0) & valid
        inputs = _span_to_sentinel(row, is_noise, valid, sentinel_start, in_len, pad_id, eos_id)
        targets = _span_to_sentinel(row, ~is_noise & valid, valid, sentinel_start, tgt_len,
                                    pad_id, eos_id)
        return inputs, targets

    if tokens.ndim == 1:
        return one_row(tokens, key)
    return jax.vmap(one_row)(tokens, jax.random.split(key, tokens.shape[0]))
