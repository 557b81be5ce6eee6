"""Statistical and structural tests of jssl.masking.

Statistical checks use large samples and a 5-sigma band around the exact expected
value (binomial or computed analytically), so a correct implementation fails them
with probability < 1e-5 per check; the keys are fixed, so a run is reproducible.
"""
import collections
import functools
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import masking as m

KEY = jax.random.key(0)

# Compiling dominates the run time, so tests share samples (module fixtures) and
# configurations (the functions jit-compile once per hyperparameter set and shape).


def within(value, expected, sigma, n_sigma=5.0):
    assert abs(value - expected) <= n_sigma * sigma, (value, expected, sigma)


def binomial_sigma(p, n):
    return math.sqrt(p * (1 - p) / n)


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


# ------------------------------------------------------------------------ MAE
PATCH_BATCH, PATCHES = 64, 196


def test_random_patch_mask_structure():
    batch, length, ratio = PATCH_BATCH, PATCHES, 0.75
    keep = int(length * (1 - ratio))
    mask, ids_keep, ids_restore = map(np.asarray, m.random_patch_mask(KEY, length, ratio, batch))
    assert mask.shape == ids_restore.shape == (batch, length) and ids_keep.shape == (batch, keep)
    assert mask.dtype == np.float32 and ids_keep.dtype == ids_restore.dtype == np.int32
    np.testing.assert_array_equal(mask.sum(1), length - keep)
    for row_mask, row_keep, row_restore in zip(mask, ids_keep, ids_restore, strict=True):
        np.testing.assert_array_equal(np.sort(row_restore), np.arange(length))
        ids_shuffle = np.argsort(row_restore)  # ids_restore inverts the shuffle
        np.testing.assert_array_equal(ids_shuffle[row_restore], np.arange(length))
        np.testing.assert_array_equal(ids_shuffle[:keep], row_keep)
        np.testing.assert_array_equal(row_mask[row_keep], 0.0)
    # MAE's decoder path: gather kept, append mask tokens, unshuffle.
    x = np.arange(batch * length * 3).reshape(batch, length, 3)
    kept = np.take_along_axis(x, ids_keep[..., None], axis=1)
    full = np.concatenate([kept, np.full((batch, length - keep, 3), -1)], axis=1)
    restored = np.take_along_axis(full, ids_restore[..., None], axis=1)
    np.testing.assert_array_equal(restored[mask == 0], x[mask == 0])
    assert (restored[mask == 1] == -1).all()
    assert len({r.tobytes() for r in mask}) == batch  # every row its own mask


def test_random_patch_mask_uniform_keys_rounding_and_jit():
    f = functools.partial(m.random_patch_mask, num_patches=PATCHES, ratio=0.75,
                          batch_size=PATCH_BATCH)
    mask = np.concatenate([np.asarray(f(jax.random.key(s))[0]) for s in range(32)])
    for p in mask.mean(0):  # every position masked with probability 0.75
        within(p, 0.75, binomial_sigma(0.75, len(mask)))
    first = f(KEY)
    for x, y in zip(first, f(jax.random.PRNGKey(0)), strict=True):  # legacy key, same stream
        np.testing.assert_array_equal(x, y)
    # MAE rounding: len_keep = int(L * (1 - ratio)) (shapes only: no compile).
    for length, ratio in [(10, 0.75), (10, 0.7), (197, 0.75), (49, 0.5)]:
        _, ids_keep, _ = jax.eval_shape(functools.partial(m.random_patch_mask, KEY, length, ratio))
        assert ids_keep.shape == (int(length * (1 - ratio)),)
    _, ids_keep, ids_restore = jax.eval_shape(f, KEY)
    assert ids_keep.shape == (PATCH_BATCH, 49) and ids_restore.shape == (PATCH_BATCH, PATCHES)
    jax.jit(f).lower(KEY)
    jax.jit(f).lower(jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0.0), "ratio"),
        (dict(ratio=1.0), "ratio"),
        (dict(ratio=0.95), "ratio"),  # int(10 * 0.05) = 0 patches kept
        (dict(num_patches=0), "num_patches"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_random_patch_mask_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        m.random_patch_mask(KEY, **(dict(num_patches=10) | kwargs))


# ----------------------------------------------------------------------- BEiT
def _beit_reference(rng, height, width, num_masked, min_block=16, min_aspect=0.3):
    """BEiT's MaskingGenerator re-written in plain Python (an independent sampler)."""
    log_ar = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros((height, width), bool)
    count = 0
    while count < num_masked:
        limit = num_masked - count
        delta = 0
        for _ in range(10):
            area = rng.uniform(min_block, limit)
            aspect = math.exp(rng.uniform(*log_ar))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                new = h * w - mask[top:top + h, left:left + w].sum()
                if 0 < new <= limit:
                    mask[top:top + h, left:left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


def _neighbours_per_masked_cell(mask):
    p = np.pad(mask.astype(int), 1)
    n = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    return (n * mask).sum() / mask.sum()


BLOCK = functools.partial(m.block_mask, grid=(14, 14), num_masked=75, batch_size=50)


@pytest.fixture(scope="module")
def block_sample():
    return np.asarray(BLOCK(KEY))


def test_block_mask_counts_and_blocks(block_sample):
    masks = block_sample
    assert masks.shape == (50, 14, 14) and masks.dtype == bool
    counts = masks.sum((1, 2))
    # Never above the target. BEiT stops after 10 rejected blocks in a row, so it can
    # end short: in 8000 draws (ours and the reference) the count was 75 in ~67 %,
    # >= 72 in ~98 %, never below 64, mean 74.47 (sd 0.9). Bounds with slack:
    assert counts.max() <= 75 and counts.min() >= 60
    assert counts.mean() >= 0.97 * 75
    # Blocks, not scattered cells: a random 75-of-196 mask has ~1.4 masked
    # 4-neighbours per masked cell; block masks had 3.1-3.9 (mean 3.36).
    neighbours = [_neighbours_per_masked_cell(x) for x in masks]
    assert min(neighbours) >= 2.5 and np.mean(neighbours) >= 3.0
    assert len({x.tobytes() for x in masks}) == 50


def test_block_mask_matches_beit_reference_distribution(block_sample):
    ours = np.concatenate([block_sample] + [np.asarray(BLOCK(jax.random.key(s)))
                                            for s in range(1, 20)])
    n = len(ours)  # 1000
    rng = random.Random(0)
    ref = np.stack([_beit_reference(rng, 14, 14, 75) for _ in range(n)])
    for stat in (lambda x: x.sum((1, 2)) == 75, lambda x: x.sum((1, 2)) >= 73):
        p_ours, p_ref = stat(ours).mean(), stat(ref).mean()
        pooled = (p_ours + p_ref) / 2
        within(p_ours - p_ref, 0.0, math.sqrt(2 * pooled * (1 - pooled) / n))
    # Per-cell coverage agrees (blocks are placed uniformly): centre and overall.
    centre = (slice(None), slice(4, 10), slice(4, 10))
    within(ours[centre].mean() - ref[centre].mean(), 0.0, 0.02)
    within(ours.mean() - ref.mean(), 0.0, 0.01)


def test_block_mask_keys_batching_options_and_jit(block_sample):
    np.testing.assert_array_equal(BLOCK(KEY), block_sample)
    np.testing.assert_array_equal(BLOCK(jax.random.PRNGKey(0)), block_sample)  # legacy key
    # batch_size=B is the single-sample function on split keys.
    single = functools.partial(m.block_mask, grid=(14, 14), num_masked=75)
    for i, k in enumerate(jax.random.split(KEY, 50)[:3]):
        np.testing.assert_array_equal(single(k), block_sample[i])
    assert single(KEY).shape == (14, 14)
    # max_block and a rectangular grid: counts stay at or below the target.
    rect = np.stack([m.block_mask(k, (8, 20), 60, max_block=16)
                     for k in jax.random.split(KEY, 20)])
    assert rect.shape == (20, 8, 20)
    assert rect.sum((1, 2)).max() <= 60 and rect.sum((1, 2)).mean() >= 0.9 * 60
    jax.jit(BLOCK).lower(KEY)
    jax.jit(BLOCK).lower(jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_masked=197), "num_masked"),
        (dict(num_masked=-1), "num_masked"),
        (dict(grid=(14,)), "grid"),
        (dict(grid=(0, 14)), "grid"),
        (dict(min_block=0), "min_block"),
        (dict(max_block=0), "max_block"),
        (dict(min_aspect=0.0), "min_aspect"),
        (dict(min_aspect=0.5, max_aspect=0.4), "max_aspect"),
    ],
)
def test_block_mask_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        m.block_mask(KEY, **(dict(grid=(14, 14), num_masked=75) | kwargs))


# ------------------------------------------------------------------ wav2vec 2.0
def expected_span_fraction(length, prob, span, min_masks):
    """Exact E[masked fraction]: k starts drawn without replacement from C positions;
    step t is unmasked iff none of the w_t starts covering it is drawn."""
    c = length - span + 1
    a = prob * length / span
    total = 0.0
    lo, frac = math.floor(a), a - math.floor(a)
    for k, p_k in ((lo, 1 - frac), (lo + 1, frac)):
        k = min(max(k, min_masks), c)
        for t in range(length):
            w = min(t, c - 1) - max(0, t - span + 1) + 1
            total += p_k * (1 - math.comb(c - w, k) / math.comb(c, k)) / length
    return total


def _runs(row):
    runs, n = [], 0
    for v in row:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + [n] if n else runs


SPAN = functools.partial(m.span_mask, length=500, prob=0.65, span=10, batch_size=256)


@pytest.fixture(scope="module")
def span_sample():
    return np.asarray(SPAN(KEY))


def test_span_mask_fraction_and_runs(span_sample):
    mask = span_sample
    batch, length = mask.shape
    assert (batch, length) == (256, 500) and mask.dtype == bool
    frac = mask.mean(1)
    expected = expected_span_fraction(length, 0.65, 10, 2)  # 0.491: overlaps
    assert 0.45 < expected < 0.65
    within(frac.mean(), expected, frac.std() / math.sqrt(batch))
    for row in mask:
        assert min(_runs(row)) >= 10  # each maximal run holds at least one span
    assert mask[:, 0].any() and mask[:, -1].any()  # starts reach both ends
    assert len({r.tobytes() for r in mask}) == batch


def test_span_mask_min_masks_and_full_span():
    # prob * length / span = 0.05: fairseq's rounding gives 0 or 1 spans (1 w.p. 0.05);
    # min_masks=2 lifts every row to 2 spans.
    mask = np.asarray(m.span_mask(KEY, 100, 0.005, 10, min_masks=2, batch_size=1000))
    counts = mask.sum(1)
    assert counts.min() >= 10 and counts.max() <= 20
    assert set(len(_runs(r)) for r in mask) == {1, 2}  # 2 spans, sometimes overlapping
    within(counts.mean() / 100, expected_span_fraction(100, 0.005, 10, 2),
           counts.std() / 100 / math.sqrt(len(counts)))
    # span == length: the only start masks everything.
    assert m.span_mask(KEY, 10, 0.5, 10).all()


def test_span_mask_keys_and_jit(span_sample):
    np.testing.assert_array_equal(SPAN(KEY), span_sample)
    np.testing.assert_array_equal(SPAN(jax.random.PRNGKey(0)), span_sample)  # legacy key
    assert not np.array_equal(SPAN(jax.random.key(1)), span_sample)
    assert jax.eval_shape(functools.partial(m.span_mask, KEY, 200)).shape == (200,)
    jax.jit(SPAN).lower(KEY)
    jax.jit(SPAN).lower(jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prob=0.0), "prob"),
        (dict(prob=1.0), "prob"),
        (dict(span=0), "span"),
        (dict(span=101), "span"),
        (dict(min_masks=-1), "min_masks"),
        (dict(length=0), "length"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_span_mask_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        m.span_mask(KEY, **(dict(length=100) | kwargs))
