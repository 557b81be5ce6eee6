"""Count-based language-model baselines for held-out perplexity (NumPy, same tokenization).

Both models score exactly the targets a causal LM is scored on: in rows ``[N, L]`` of token
ids, position t + 1 is a target of context t when neither is padding (``pad_id``).

* Unigram, add-one (Laplace):  p(w) = (c(w) + 1) / (N + V)
* Bigram, Dirichlet-smoothed towards the unigram (MacKay & Peto 1995):
      p(w | v) = (c(v, w) + α · p(w)) / (c(v) + α)
  with c(v) = Σ_w c(v, w); α is picked from ``alphas`` by the perplexity on the last
  ``val_fraction`` of the training rows (counts from the others), then the counts are refitted
  on every training row.

Perplexity = exp(mean over held-out targets of -log p). Counts come from training targets only.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_pairs(rows: np.ndarray, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(context, target) ids of every scored position of ``rows [N, L]``."""
    rows = np.asarray(rows)
    prev, nxt = rows[:, :-1], rows[:, 1:]
    valid = (prev != pad_id) & (nxt != pad_id)
    return prev[valid].astype(np.int64), nxt[valid].astype(np.int64)


def unigram_probs(targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one unigram p [V] from the target ids."""
    counts = np.bincount(targets, minlength=vocab_size).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + vocab_size)


def _bigram_nll(ctx, tgt, test_ctx, test_tgt, p_uni, alpha) -> float:
    v = p_uni.shape[0]
    codes, pair_counts = np.unique(ctx * v + tgt, return_counts=True)
    ctx_counts = np.bincount(ctx, minlength=v).astype(np.float64)
    query = test_ctx * v + test_tgt
    at = np.clip(np.searchsorted(codes, query), 0, max(len(codes) - 1, 0))
    c_vw = np.where((len(codes) > 0) & (codes[at] == query), pair_counts[at], 0)
    p = (c_vw + alpha * p_uni[test_tgt]) / (ctx_counts[test_ctx] + alpha)
    return float(-np.mean(np.log(p)))


def ngram_perplexities(train_rows: np.ndarray, test_rows: np.ndarray, vocab_size: int, *,
                       pad_id: int = 0, alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
                       val_fraction: float = 0.1) -> dict[str, float]:
    """{"unigram", "bigram", "bigram_alpha"}: held-out perplexities of the module docstring."""
    if not 0.0 < val_fraction < 1.0 or not alphas:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1) and alphas={alphas} "
                         "non-empty")
    train_rows = np.asarray(train_rows)
    ctx, tgt = target_pairs(train_rows, pad_id)
    test_ctx, test_tgt = target_pairs(test_rows, pad_id)
    if len(tgt) == 0 or len(test_tgt) == 0:
        raise ValueError("ngram_perplexities: no scored (non-padding) positions in train or test")
    p_uni = unigram_probs(tgt, vocab_size)
    unigram = float(np.exp(-np.mean(np.log(p_uni[test_tgt]))))
    n_fit = max(1, int(round(len(train_rows) * (1.0 - val_fraction))))
    fit_ctx, fit_tgt = target_pairs(train_rows[:n_fit], pad_id)
    val_ctx, val_tgt = target_pairs(train_rows[n_fit:], pad_id)
    if len(val_tgt) and len(fit_tgt):
        p_fit = unigram_probs(fit_tgt, vocab_size)
        scores = [_bigram_nll(fit_ctx, fit_tgt, val_ctx, val_tgt, p_fit, a) for a in alphas]
        alpha = float(alphas[int(np.argmin(scores))])
    else:
        alpha = float(alphas[0])
    bigram = float(np.exp(_bigram_nll(ctx, tgt, test_ctx, test_tgt, p_uni, alpha)))
    return {"unigram": unigram, "bigram": bigram, "bigram_alpha": alpha}
