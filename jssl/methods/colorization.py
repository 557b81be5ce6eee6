"""Colorful image colorization (Zhang, Isola, Efros 2016), as a pretext task.

    Q = the in-gamut bins of a 23 × 23 grid of side-10 squares in the CIE ab plane
        (``jssl.augment.pretext.ab_bin_centers``: 261 classes here, 313 in the paper)
    for a minibatch x of N colour images:
        v = random resized crop + flip of x
        input   L = lightness of v / 100                         ([N, H, W, 1])
        target  y_ij = the ab class of pixel (i, j) of v resized (area) to t × t
        ŷ = bilinear upsampling to t × t of a 1 × 1 conv (-> |Q| logits) on f's last map
        loss = mean over the N·t·t target pixels of CE(ŷ_ij, y_ij)

The encoder f sees only the L channel, so ``features`` is f's pooled output on the L channel
of the evaluation images too. Deviations from the paper: a ResNet's last feature map
(stride 32, or 8 with the CIFAR stem) upsampled, instead of the paper's dilated VGG at 1/4
resolution; no class rebalancing (the paper's λ = 0.5 prior reweighting); plain cross-entropy
on hard labels instead of the soft-encoded target (5 nearest bins, Gaussian σ = 5).

Colorization needs colour images: with 1-channel data (Fashion-MNIST) every pixel's ab is 0,
all targets are one class and the task is void. Such data are refused unless
``method_params.allow_grayscale`` is set, which the ``tiny`` smoke-test preset does.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.pretext import ab_bin_centers, colorization_targets
from jssl.augment.recipes import ViewParams, make_views
from jssl.methods.base import Method
from jssl.models.encoders import make_encoder


class ColorizationNet(nn.Module):
    """L ``[B, H, W, 1]`` -> ab-class logits ``[B, t, t, classes]`` (float32)."""

    encoder: nn.Module  # returns (pooled, feature map)
    num_classes: int
    target_size: int

    @nn.compact
    def __call__(self, lightness: jax.Array, *, train: bool = True) -> jax.Array:
        _, fmap = self.encoder(lightness, train=train)
        logits = nn.Dense(self.num_classes, name="head")(fmap).astype(jnp.float32)
        b, t = logits.shape[0], self.target_size
        return jax.image.resize(logits, (b, t, t, self.num_classes), method="bilinear")

    def encode(self, lightness: jax.Array) -> jax.Array:
        return self.encoder(lightness, train=False)[0]


class Colorization(Method):
    name = "colorization"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        enc = config.model.encoder
        if enc.name != "resnet":
            raise ValueError(f"config.model.encoder.name={enc.name!r}: colorization needs a "
                             "convolutional feature map; use 'resnet'")
        p = config.method_params
        self.num_bins, self.bin_size = int(p.get("num_bins", 23)), float(p.get("bin_size", 10.0))
        self.allow_grayscale = bool(p.get("allow_grayscale", False))
        self.net = ColorizationNet(make_encoder({**enc.to_dict(), "return_feature_map": True}),
                                   len(ab_bin_centers(self.num_bins, self.bin_size)),
                                   int(p.target_size))
        aug = config.augment
        self.out_size = aug.size
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.5),
                               jitter_p=0.0, grayscale_p=0.0)

    def _check_channels(self, images: jax.Array) -> None:
        if images.shape[-1] == 1 and not self.allow_grayscale:
            raise ValueError(
                f"colorization needs RGB images but config.data.name={self.config.data.name!r} "
                "gives 1-channel images; train on colour data (e.g. imagenet2012), or set "
                "config.method_params.allow_grayscale=True for a smoke test (targets all one "
                "class)")

    def lightness(self, images: jax.Array) -> jax.Array:
        """L / 100 ``[B, H, W, 1]`` of float images in [0, 1]."""
        return jax.vmap(lambda x: colorization_targets(x, self.num_bins, self.bin_size)[0])(
            images)

    def pretext(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(L / 100 ``[B, H, W, 1]``, ab classes ``[B, t, t]`` of the images resized to t)."""
        self._check_channels(images)
        t = self.net.target_size
        small = jax.image.resize(images, (images.shape[0], t, t, images.shape[-1]),
                                 method="linear", antialias=True)
        labels = jax.vmap(lambda x: colorization_targets(
            jnp.clip(x, 0.0, 1.0), self.num_bins, self.bin_size)[1])(small)
        return self.lightness(images), labels

    def init(self, key, batch):
        self._check_channels(batch["image"])
        x = jnp.zeros((2, self.out_size, self.out_size, 1))
        return dict(self.net.init(key, x, train=True)), {}

    def prepare(self, batch, key):
        (views,) = make_views(key, self.images(batch), [(self.view, self.out_size)])
        lightness, labels = self.pretext(views)
        return {"lightness": lightness, "label": labels}

    def loss(self, params, variables, extra, batch, key, step):
        logits, new_vars = self.net.apply({**variables, "params": params}, batch["lightness"],
                                          train=True, mutable=["batch_stats"])
        loss = losses.classification(logits, batch["label"])
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"pixel_accuracy": accuracy}, dict(new_vars))

    def features(self, variables, extra, images):
        return self.net.apply(variables, self.lightness(images), method=ColorizationNet.encode)
