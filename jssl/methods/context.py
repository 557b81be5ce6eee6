"""Context prediction (Doersch, Gupta, Efros 2015, "Unsupervised Visual Representation
Learning by Context Prediction").

    for a minibatch x of N images:
        v = random resized crop + flip of x
        place a 3 × 3 layout of p × p patches separated by a gap at a random position in v;
        y ~ U{0 .. 7}: the neighbour is the patch at offset CONTEXT_OFFSETS[y] from the centre
        (0 top-left, 1 top, 2 top-right, 3 left, 4 right, 5 bottom-left, 6 bottom, 7 bottom-right)
        each patch is shifted by an independent jitter in [−j, j] per axis
        h = concat(f(centre), f(neighbour))            (siamese: one shared encoder f)
        loss = mean over examples of CE(g(h), y)       (g: MLP head -> 8 classes)

The gap and jitter keep the network from solving the task by continuing lines and textures
across the patch boundary (the paper: 96 px patches, 48 px gap, up to 7 px jitter).
Not implemented: the paper's defences against chromatic aberration (projecting out the
green-magenta axis or dropping two colour channels) and its downsample-upsample of patches.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jssl.augment.ops import apply_batch
from jssl.augment.pretext import context_pair
from jssl.methods.pretext_base import PretextClassification


class ContextPrediction(PretextClassification):
    name = "context"
    num_classes = 8

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        p = config.method_params
        self.patch_size, self.gap, self.jitter = int(p.patch_size), int(p.gap), int(p.jitter)
        span = 3 * self.patch_size + 2 * (self.gap + self.jitter)
        if span > config.augment.size:
            raise ValueError(
                f"config.method_params: patch_size={self.patch_size}, gap={self.gap}, "
                f"jitter={self.jitter} need a {span}x{span} view but config.augment.size="
                f"{config.augment.size}; use smaller patches/gap or a larger view")
        super().__init__(config, mesh)

    def pretext(self, key, images):
        one = functools.partial(context_pair, patch_size=self.patch_size, gap=self.gap,
                                jitter=self.jitter)
        centre, neighbour, labels = apply_batch(lambda k, x: one(k, x), key, images)
        return jnp.stack([centre, neighbour], axis=1), labels
