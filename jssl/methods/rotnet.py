"""RotNet (Gidaris, Singh, Komodakis 2018, "Unsupervised Representation Learning by Predicting
Image Rotations").

    for a minibatch x of N images:
        v = random resized crop + flip of x
        for every image, all four rotations  r ∈ {0°, 90°, 180°, 270°}  (label y = r / 90°)
        loss = mean over the 4N rotated images of CE(g(f(rot(v, y))), y)

Every image appears in all four rotations in the same batch (the paper's finding that this
beats one random rotation per image). Rotation is counter-clockwise (``jnp.rot90``); the
4N rows are example-major (rows 4b..4b+3 are example b at 0, 90, 180, 270°), so they stay on
their example's device. Views must be square (``jssl.augment.pretext.rotate_batch``).
"""
from __future__ import annotations

from jssl.augment.pretext import rotate_batch
from jssl.methods.pretext_base import PretextClassification


class RotNet(PretextClassification):
    name = "rotnet"
    num_classes = 4

    def pretext(self, key, images):
        del key  # every rotation of every image: nothing random
        rotated, labels = rotate_batch(images)
        return rotated[:, None], labels

