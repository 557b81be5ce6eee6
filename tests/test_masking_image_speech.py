"""Statistical and structural tests of jssl.masking: MAE patches, BEiT blocks, wav2vec spans.

Statistical checks use large samples and a 5-sigma band around the exact expected
value (binomial or computed analytically), so a correct implementation fails them
with probability < 1e-5 per check; the keys are fixed, so a run is reproducible.
"""
import functools
import math
import random

import jax
import numpy as np
import pytest
from stat_bounds import binomial_sigma, within

from jssl import masking as m

KEY = jax.random.key(0)

# Compiling dominates the run time, so tests share samples (module fixtures) and
# configurations (the functions jit-compile once per hyperparameter set and shape).


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
