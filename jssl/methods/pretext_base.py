"""The classic pretext recipe shared by RotNet, Jigsaw and context prediction.

    for a minibatch x of N images:
        v = random resized crop + horizontal flip of x      (made on the device)
        (x_1 .. x_K, y) = pretext(v)                        (K inputs per example, a label)
        h = concat_k f(x_k)                                 (one shared "siamese" encoder f)
        loss = mean over examples of CE(g(h), y)            (g: MLP head -> C classes)

K = 1 for RotNet (each example is one rotated image), 9 for Jigsaw (the tiles), 2 for
context prediction (centre and neighbour patch). A subclass says only how it makes the
pretext inputs and labels (``pretext``) and how many classes there are; ``features`` is the
encoder f on the whole image. Params: ``params["encoder"]`` (loadable by a fine-tuning run)
and ``params["head"]``.
"""
from __future__ import annotations

import abc
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import ViewParams, make_views
from jssl.methods.base import Method
from jssl.models.encoders import make_encoder
from jssl.models.heads import ProjectionMLP


class SiameseClassifier(nn.Module):
    """logits = head(concat_k encoder(x_k)) for inputs ``[N, K, h, w, C]`` -> ``[N, classes]``."""

    encoder: nn.Module
    head: nn.Module

    def __call__(self, x: jax.Array, *, train: bool = True) -> jax.Array:
        n, k = x.shape[:2]
        h = self.encoder(x.reshape((n * k,) + x.shape[2:]), train=train)  # example-major
        return self.head(h.reshape(n, k * h.shape[-1]), train=train)

    def encode(self, images: jax.Array) -> jax.Array:
        return self.encoder(images, train=False)


class PretextClassification(Method):
    """Base of the pretext-classification methods; subclasses implement ``pretext``."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        head = config.model.head
        self.net = SiameseClassifier(
            make_encoder(config.model.encoder),
            ProjectionMLP(hidden_dim=head.hidden_dim, out_dim=self.num_classes,
                          num_layers=head.num_layers, use_bn=head.get("use_bn", True)))
        aug = config.augment
        self.out_size = aug.size
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.5),
                               jitter_p=0.0, grayscale_p=0.0)

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """C, the number of pretext classes."""

    @abc.abstractmethod
    def pretext(self, key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(inputs ``[M, K, h, w, C]``, int32 labels ``[M]``) from float images ``[B, H, W, C]``;
        M is B or a multiple of it, in example-major order."""

    def init(self, key, batch):
        views = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        inputs, _ = self.pretext(key, views)
        return dict(self.net.init(key, inputs, train=True)), {}

    def prepare(self, batch, key):
        view_key, pretext_key = jax.random.split(key)
        (views,) = make_views(view_key, self.images(batch), [(self.view, self.out_size)])
        inputs, labels = self.pretext(pretext_key, views)
        return {"inputs": inputs, "label": labels}

    def loss(self, params, variables, extra, batch, key, step):
        logits, new_vars = self.net.apply({**variables, "params": params}, batch["inputs"],
                                          train=True, mutable=["batch_stats"])
        loss = losses.classification(logits, batch["label"])
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"pretext_accuracy": accuracy}, dict(new_vars))

    def features(self, variables, extra, images):
        return self.net.apply(variables, images, method=SiameseClassifier.encode)
