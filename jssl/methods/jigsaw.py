"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles").

    P = a fixed set of permutations of the 9 tiles, chosen greedily for maximal minimum
        Hamming distance (``jssl.augment.pretext.jigsaw_permutations``)
    for a minibatch x of N images:
        v = random resized crop + flip of x
        cut v into a 3 × 3 grid of cells, take a random (cell − jitter)-sized tile in each cell
        (tiles normalised to zero mean, unit std each, against low-level shortcuts)
        y ~ U{0 .. |P| − 1};  slot i holds the tile of cell P[y][i]
        h = concat_i f(slot_i)                     (the "context-free network": one shared f)
        loss = mean over examples of CE(g(h), y)

``tiles[argsort(P[y])]`` restores row-major order. The permutation set is deterministic in
``method_params.perm_seed``; the paper picks its 1000 from all 9! permutations, here from
``method_params.num_candidates`` random ones (minimum Hamming distance 6 for 100 of 10 000).
"""
from __future__ import annotations

import functools
from typing import Any

import jax

from jssl.augment.ops import apply_batch
from jssl.augment.pretext import jigsaw, jigsaw_permutations
from jssl.methods.pretext_base import PretextClassification


class Jigsaw(PretextClassification):
    name = "jigsaw"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        p = config.method_params
        self.grid = int(p.get("grid", 3))
        if int(p.num_perms) < 2:
            raise ValueError(f"config.method_params.num_perms={p.num_perms} must be >= 2; "
                             "the paper uses 1000")
        self.perms = jigsaw_permutations(int(p.num_perms), seed=int(p.get("perm_seed", 0)),
                                         num_candidates=int(p.get("num_candidates", 10_000)),
                                         grid=self.grid)
        self.tile_jitter = int(p.tile_jitter)
        self.normalize_tiles = bool(p.get("normalize_tiles", True))
        super().__init__(config, mesh)

    @property
    def num_classes(self) -> int:
        return len(self.perms)

    def pretext(self, key, images):
        one = functools.partial(jigsaw, perms=self.perms, grid=self.grid,
                                tile_jitter=self.tile_jitter,
                                normalize_tiles=self.normalize_tiles)
        return apply_batch(lambda k, x: one(k, x), key, images)
