"""Nearest neighbours of word vectors, and the co-occurrence sanity check of word2vec.

``nearest(vectors, queries, k, candidates)``: for each query id the ``k`` candidate ids of
highest cosine similarity, the query itself excluded, best first.

``cooccurrence_check``: among the frequent ids (training count >= ``min_count``, specials
excluded), count the pairs (x, y) that occur within ``window`` positions of each other in the
same held-out document, score them by PMI = log(c_xy · N / (c_x · c_y)) (held-out counts,
N = held-out tokens), keep pairs seen >= ``min_pair`` times, and report the fraction of the
``num_pairs`` highest-PMI pairs whose y is among the k nearest frequent neighbours of x,
next to the same fraction for as many random pairs of frequent ids (seeded).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def nearest(vectors: np.ndarray, queries: Sequence[int], k: int,
            candidates: Sequence[int] | None = None) -> np.ndarray:
    """[len(queries), k] ids of the highest-cosine candidates (the query excluded)."""
    cand = np.arange(len(vectors)) if candidates is None else np.asarray(candidates)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    q = np.asarray(queries)
    sims = unit[q] @ unit[cand].T
    sims[cand[None, :] == q[:, None]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return cand[order]


def cooccurrence_check(vectors: np.ndarray, docs: Sequence[np.ndarray], counts: np.ndarray,
                       ignore: Sequence[int], *, window: int = 2, min_count: int = 50,
                       min_pair: int = 5, num_pairs: int = 100, k: int = 10,
                       seed: int = 0) -> dict:
    frequent = np.setdiff1d(np.nonzero(counts >= min_count)[0], np.asarray(ignore))
    is_frequent = np.zeros(len(vectors), bool)
    is_frequent[frequent] = True
    unigram, pairs = Counter(), Counter()
    total = 0
    for d in docs:
        d = [int(t) for t in d]
        total += len(d)
        unigram.update(d)
        for i, x in enumerate(d):
            for y in d[i + 1:i + 1 + window]:
                if x != y and is_frequent[x] and is_frequent[y]:
                    pairs[(min(x, y), max(x, y))] += 1
    scored = sorted(((np.log(c * total / (unigram[x] * unigram[y])), x, y)
                     for (x, y), c in pairs.items() if c >= min_pair), reverse=True)
    top = [(x, y) for _, x, y in scored[:num_pairs]]
    if not top:
        raise ValueError(f"no frequent pair occurs >= min_pair={min_pair} times in the held-out "
                         f"documents; lower min_pair or min_count={min_count}")
    rng = np.random.default_rng(seed)
    rand = [tuple(rng.choice(frequent, 2, replace=False)) for _ in range(len(top))]

    def rate(ps):
        nn = nearest(vectors, [x for x, _ in ps], k, frequent)
        return float(np.mean([y in row for (_, y), row in zip(ps, nn, strict=True)]))

    return {"pmi_rate": rate(top), "random_rate": rate(rand), "k": k, "pairs": len(top),
            "frequent_ids": int(len(frequent)),
            "top_pairs": [[int(x), int(y)] for x, y in top[:10]]}
