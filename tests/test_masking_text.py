"""Statistical and structural tests of jssl.masking: BERT and T5 span corruption.

Statistical checks use large samples and a 5-sigma band around the exact expected
value (binomial or computed analytically), so a correct implementation fails them
with probability < 1e-5 per check; the keys are fixed, so a run is reproducible.
"""
import collections
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stat_bounds import binomial_sigma, within

from jssl import masking as m

KEY = jax.random.key(0)

# Compiling dominates the run time, so tests share samples (module fixtures) and
# configurations (the functions jit-compile once per hyperparameter set and shape).


# ----------------------------------------------------------------------- BERT
PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 1000
SPECIALS = (PAD, CLS, SEP)


def _bert_batch(seed=0, batch=64, length=512):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, VOCAB, size=(batch, length))
    for row, n in zip(tokens, rng.integers(length // 2, length + 1, size=batch), strict=True):
        row[0], row[n - 1], row[n:] = CLS, SEP, PAD
    return jnp.asarray(tokens, jnp.int32)


@pytest.fixture(scope="module")
def bert_sample():
    tokens = _bert_batch()
    return tokens, m.bert_mask(tokens, KEY, VOCAB, MASK, SPECIALS)


def test_bert_rates_specials_and_labels(bert_sample):
    tokens, (inputs, labels, weights) = bert_sample
    tokens, inputs, labels, weights = map(np.asarray, (tokens, inputs, labels, weights))
    assert inputs.dtype == tokens.dtype and weights.dtype == np.float32
    np.testing.assert_array_equal(labels, tokens)

    special = np.isin(tokens, SPECIALS)
    chosen = weights == 1.0
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert not chosen[special].any()
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])  # only chosen change

    n_eligible = int((~special).sum())
    within(chosen.sum() / n_eligible, 0.15, binomial_sigma(0.15, n_eligible))

    n = int(chosen.sum())
    masked = inputs[chosen] == MASK  # originals are >= 4, never MASK
    unchanged = inputs[chosen] == tokens[chosen]
    randomised = ~masked & ~unchanged
    # A random draw hits the original token with probability 1/#allowed ids.
    p_hit = 1.0 / (VOCAB - 4)
    within(masked.mean(), 0.8, binomial_sigma(0.8, n))
    within(randomised.mean(), 0.1 * (1 - p_hit), binomial_sigma(0.1, n))
    within(unchanged.mean(), 0.1 + 0.1 * p_hit, binomial_sigma(0.1, n))
    drawn = inputs[chosen][randomised]
    assert ((drawn >= 4) & (drawn < VOCAB)).all()  # never a special id or MASK


def test_bert_random_tokens_uniform_over_non_special_ids():
    # Small vocabulary, specials in the middle: the draw skips them and stays uniform.
    vocab, specials, mask_id = 10, (0, 5), 9
    allowed = [1, 2, 3, 4, 6, 7, 8]
    tokens = jnp.full((64, 512), 1, jnp.int32)
    inputs, _, weights = m.bert_mask(tokens, jax.random.key(3), vocab, mask_id, specials, 0.9,
                                     mask_replace_prob=0.0, random_replace_prob=1.0)
    drawn = np.asarray(inputs)[np.asarray(weights) == 1.0]
    counts = collections.Counter(drawn.tolist())
    assert set(counts) == set(allowed)
    p = 1 / len(allowed)
    for token in allowed:
        within(counts[token] / drawn.size, p, binomial_sigma(p, drawn.size))


def test_bert_deterministic_keys_shapes_and_jit(bert_sample):
    tokens, first = bert_sample
    f = functools.partial(m.bert_mask, vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIALS)
    for x, y in zip(first, f(tokens, jax.random.key(0)), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[2], f(tokens, jax.random.key(1))[2])
    # A legacy uint32 key is the same stream as the typed key wrapping it.
    for x, y in zip(first, f(tokens, jax.random.PRNGKey(0)), strict=True):
        np.testing.assert_array_equal(x, y)
    # Any leading shape: [2, 32, 512] works elementwise like [64, 512].
    inputs, labels, weights = f(tokens.reshape(2, 32, 512), KEY)
    assert inputs.shape == weights.shape == (2, 32, 512)
    np.testing.assert_array_equal(labels, tokens.reshape(2, 32, 512))
    # Traceable under an outer jit with either key style (lowering only: no compile).
    jax.jit(f).lower(tokens, KEY)
    jax.jit(f).lower(tokens, jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate=0.0), "rate"),
        (dict(rate=1.0), "rate"),
        (dict(mask_replace_prob=0.95, random_replace_prob=0.1), "mask_replace_prob"),
        (dict(random_replace_prob=-0.1), "random_replace_prob"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=3), "vocab_size"),  # every id is special or MASK
    ],
)
def test_bert_bad_arguments(kwargs, match):
    args = dict(vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIALS) | kwargs
    with pytest.raises(ValueError, match=match):
        m.bert_mask(jnp.ones((2, 8), jnp.int32), KEY, **args)


def test_bert_rejects_float_tokens():
    with pytest.raises(ValueError, match="tokens"):
        m.bert_mask(jnp.ones((2, 8)), KEY, VOCAB, MASK, SPECIALS)


# ------------------------------------------------------------------------- T5
SENTINEL = 32099  # T5: vocab_size - 1, <extra_id_0>
T5_VOCAB = 32000  # ordinary ids stay below the sentinels


def _is_sentinel(t):
    return SENTINEL - 100 < t <= SENTINEL


def reconstruct(inputs, targets, pad_id=0, eos_id=None):
    """Invert span corruption: each sentinel in inputs -> the ids after it in targets."""
    def strip(seq):
        seq = [int(t) for t in seq]
        while seq and seq[-1] == pad_id:
            seq.pop()
        if eos_id is not None and seq:
            assert seq.pop() == eos_id
        return seq

    inputs, targets = strip(inputs), strip(targets)
    dropped, current = {}, None
    for t in targets:
        if _is_sentinel(t):
            assert t not in dropped
            current = dropped[t] = []
        else:
            assert current is not None, "targets must start with a sentinel"
            current.append(t)
    out = []
    for t in inputs:
        out.extend(dropped.pop(t) if _is_sentinel(t) else [t])
    return out, inputs, targets


def _t5_batch(seed=0, batch=64, length=512):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(1, T5_VOCAB, size=(batch, length)), jnp.int32)


@pytest.fixture(scope="module")
def t5_sample():
    tokens = _t5_batch(batch=64, length=512)
    return tokens, m.t5_span_corruption(tokens, KEY, 0.15, 3.0, sentinel_start=SENTINEL)


def test_t5_reconstruction_counts_and_sentinels(t5_sample):
    tokens, (inputs, targets) = t5_sample
    batch, length = tokens.shape
    num_noise = round(length * 0.15)  # 77
    num_spans = round(num_noise / 3.0)  # 26
    assert m.t5_output_lengths(length, 0.15, 3.0) == (length - num_noise + num_spans,
                                                      num_noise + num_spans)
    assert inputs.shape == (batch, length - num_noise + num_spans)
    assert targets.shape == (batch, num_noise + num_spans)

    noise_lengths, nonnoise_lengths = [], []
    for row, inp, tgt in zip(np.asarray(tokens), np.asarray(inputs), np.asarray(targets),
                             strict=True):
        out, inp, tgt = reconstruct(inp, tgt)
        assert out == row.tolist()
        in_sent = [t for t in inp if _is_sentinel(t)]
        tgt_sent = [t for t in tgt if _is_sentinel(t)]
        # Sentinels count down from sentinel_start, in the same order on both sides.
        assert in_sent == tgt_sent == list(range(SENTINEL, SENTINEL - num_spans, -1))
        # Noise fraction is exactly round(L * density) / L.
        assert sum(not _is_sentinel(t) for t in tgt) == num_noise
        # Spans alternate starting with non-noise, so the inputs end with a sentinel.
        assert not _is_sentinel(inp[0]) and _is_sentinel(inp[-1])
        noise_lengths += [len(s) for s in _split_at_sentinels(tgt)]
        nonnoise_lengths += [len(s) for s in _split_at_sentinels([SENTINEL] + inp[:-1])]

    assert min(noise_lengths) >= 1 and min(nonnoise_lengths) >= 1
    assert abs(np.mean(noise_lengths) - 3.0) < 0.1  # 77 / 26 = 2.96
    assert np.mean(nonnoise_lengths) == pytest.approx((length - num_noise) / num_spans)
    # Span lengths follow a uniform composition of 77 into 26 positive parts:
    # P(len = k) = C(N - k - 1, S - 2) / C(N - 1, S - 1).
    n = len(noise_lengths)
    for k in (1, 2, 3, 5):
        p = math.comb(num_noise - k - 1, num_spans - 2) / math.comb(num_noise - 1, num_spans - 1)
        within(np.mean(np.asarray(noise_lengths) == k), p, binomial_sigma(p, n))


def _split_at_sentinels(seq):
    spans = []
    for t in seq:
        if _is_sentinel(t):
            spans.append([])
        else:
            spans[-1].append(t)
    return spans


def test_t5_padded_rows(t5_sample):
    # Rows of 512, 60, 7, 2, 1 real ids, then pad_id: the padding is left alone and
    # the outputs are padded with pad_id (same configuration as the full batch).
    tokens, _ = t5_sample
    lengths = [512, 60, 7, 2, 1] + list(range(100, 512, 7))[:59]
    padded = np.array(tokens)
    for r, n in zip(padded, lengths, strict=True):
        r[n:] = 0
    inputs, targets = m.t5_span_corruption(jnp.asarray(padded), jax.random.key(5),
                                           sentinel_start=SENTINEL, pad_id=0)
    for r, n, inp, tgt in zip(padded, lengths, np.asarray(inputs), np.asarray(targets),
                              strict=True):
        out, inp_ids, tgt_ids = reconstruct(inp, tgt)
        assert out == r[:n].tolist()
        num_noise = min(max(round(n * 0.15), 1), n - 1) if n >= 2 else 0
        assert sum(not _is_sentinel(t) for t in tgt_ids) == num_noise
        num_spans = max(round(num_noise / 3), 1) if n >= 2 else 0
        assert len(inp_ids) == n - num_noise + num_spans  # content, then only padding
        assert (inp[len(inp_ids):] == 0).all() and (tgt[len(tgt_ids):] == 0).all()


def test_t5_single_row_with_eos():
    # One [L] row, padded after 300 ids, with EOS appended to both outputs.
    row = _t5_batch(batch=1, length=512)[0].at[300:].set(0)
    inputs, targets = m.t5_span_corruption(row, KEY, sentinel_start=SENTINEL, eos_id=1)
    assert (inputs.shape[0], targets.shape[0]) == m.t5_output_lengths(512, eos=True)
    out, inp_ids, tgt_ids = reconstruct(inputs, targets, eos_id=1)
    assert out == np.asarray(row[:300]).tolist()
    for seq, ids in ((np.asarray(inputs), inp_ids), (np.asarray(targets), tgt_ids)):
        assert seq[len(ids)] == 1 and (seq[len(ids) + 1:] == 0).all()  # ids, EOS, padding
    assert len(inp_ids) == 300 - 45 + 15 and len(tgt_ids) == 45 + 15


def test_t5_deterministic_keys_and_jit(t5_sample):
    tokens, first = t5_sample
    f = functools.partial(m.t5_span_corruption, sentinel_start=SENTINEL)
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        for x, y in zip(first, f(tokens, key), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], f(tokens, jax.random.key(1))[0])
    # Rows get different noise from one key.
    assert len({tuple(np.asarray(r) >= SENTINEL - 100) for r in first[0]}) == tokens.shape[0]
    jax.jit(f).lower(tokens, KEY)
    jax.jit(f).lower(tokens, jax.random.PRNGKey(0))


def test_t5_raw_length_matches_t5():
    # T5's random_spans_helper: 568 raw tokens -> 512 inputs and 114 targets with EOS.
    assert m.t5_raw_length(512, 0.15, 3.0) == (568, 114)
    assert m.t5_output_lengths(568, 0.15, 3.0, eos=True) == (512, 114)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise_density=0.0), "noise_density"),
        (dict(noise_density=1.0), "noise_density"),
        (dict(mean_span_length=0.5), "mean_span_length"),
        (dict(noise_density=0.9, mean_span_length=1.0), "noise_density"),  # spans can't alternate
        (dict(sentinel_start=1), "sentinel_start"),  # 3 spans need ids 1, 0, -1
    ],
)
def test_t5_bad_arguments(kwargs, match):
    args = dict(sentinel_start=SENTINEL) | kwargs
    with pytest.raises(ValueError, match=match):
        m.t5_span_corruption(jnp.ones((2, 64), jnp.int32), KEY, **args)


def test_t5_bad_shapes():
    with pytest.raises(ValueError, match="tokens"):
        m.t5_span_corruption(jnp.ones((2, 2, 64), jnp.int32), KEY, sentinel_start=SENTINEL)
    with pytest.raises(ValueError, match="length"):
        m.t5_output_lengths(1)
