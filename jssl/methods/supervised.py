"""Supervised training of an SSL backbone: the from-scratch baseline and full fine-tuning.

The label-efficiency protocol compares, with the same backbone, augmentation and budget:

    supervised from scratch:  θ ~ init;             minimise CE(W f_θ(view(x)), y) over labelled x
    full fine-tuning:         θ ← θ_SSL (encoder);  the same objective, every weight trained

    view(x) = random resized crop (scale ``augment.scale``) + horizontal flip
              (+ optional colour jitter), made on the accelerator, one key per example
    loss    = mean over the global batch of softmax cross-entropy
              (label smoothing ``loss.label_smoothing``)

Only a fraction of the labels is used: ``config.data.label_fraction`` (balanced per class,
fixed by ``config.seed``) restricts the training split the loader reads. Fine-tuning is
this method with ``config.init_from`` naming an SSL run's workdir (or checkpoint
directory): its ``params["encoder"]`` and ``batch_stats["encoder"]`` replace the fresh
encoder before the first step (``jssl.train.pretrained``); the classifier starts at zero.

Fine-tuning from the middle of the projection head (SimCLRv2, Chen et al. 2020b, §2):
with ``config.model.projector.keep_hidden = k > 0`` the classifier sits on the first k
``Linear-BN-ReLU`` blocks of the SSL run's projector, g_k(f_θ(x)), copied with the encoder
and trained with it ("fine-tuning from the first layer of the projection head" is k = 1).
The probes' features are then the classifier's input, g_k(f_θ(x)).

Evaluation reports the classifier's own test accuracy (``predict``) next to the usual
kNN and linear probes of the encoder's features.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl import losses
from jssl.augment.recipes import ViewParams, make_views
from jssl.methods.base import Method
from jssl.models.encoders import make_encoder
from jssl.models.heads import LinearClassifier, ProjectionMLP


class EncoderClassifier(nn.Module):
    """logits = W g(f(x)) + b, g the kept projector blocks or the identity; returns
    (the classifier's input, logits)."""

    encoder: nn.Module
    classifier: nn.Module
    projector: nn.Module | None = None

    def __call__(self, x: jax.Array, *, train: bool = True) -> tuple[jax.Array, jax.Array]:
        h = self.encoder(x, train=train)
        if self.projector is not None:
            h = self.projector(h, train=train)
        return h, self.classifier(h, train=train)


def kept_projector(config: Any) -> ProjectionMLP | None:
    """The first ``config.model.projector.keep_hidden`` blocks of the SSL run's projector
    (None when 0 or absent: the classifier sits on the encoder)."""
    cfg = config.model.get("projector")
    keep = int(cfg.get("keep_hidden", 0)) if cfg is not None else 0
    if keep == 0:
        return None
    if keep < 0 or keep > cfg.num_layers - 1:
        raise ValueError(f"config.model.projector.keep_hidden={keep}: a {cfg.num_layers}-layer "
                         f"projector has 0..{cfg.num_layers - 1} hidden blocks to keep")
    return ProjectionMLP(hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                         use_bn=cfg.get("use_bn", True), keep_hidden=keep)


class Supervised(Method):
    name = "supervised"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.net = EncoderClassifier(make_encoder(config.model.encoder),
                                     LinearClassifier(config.eval.num_classes),
                                     kept_projector(config))
        aug = config.augment
        self.out_size = aug.size
        self.view = ViewParams(scale=tuple(aug.scale), flip_p=aug.get("flip_p", 0.5),
                               jitter_p=aug.get("jitter_p", 0.0), grayscale_p=0.0)
        self.label_smoothing = config.get("loss", {}).get("label_smoothing", 0.0)

    def init(self, key, batch):
        x = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        return dict(self.net.init(key, x, train=True)), {}

    def prepare(self, batch, key):
        (views,) = make_views(key, self.images(batch), [(self.view, self.out_size)])
        return {"views": views, "label": batch["label"]}

    def loss(self, params, variables, extra, batch, key, step):
        (_, logits), new_vars = self.net.apply({**variables, "params": params}, batch["views"],
                                               train=True, mutable=["batch_stats"])
        loss = losses.classification(logits, batch["label"],
                                     label_smoothing=self.label_smoothing)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"train_accuracy": accuracy}, dict(new_vars))

    def features(self, variables, extra, images):
        h, _ = self.net.apply(variables, images, train=False)
        return h

    def own_protocol(self) -> tuple[str, str, float]:
        """(protocol, kind, label fraction) of the test accuracy of ``predict``."""
        frac = float(self.config.data.get("label_fraction", 1.0))
        if self.config.get("init_from"):
            return f"fine-tuned ({frac:.0%} labels)", "finetune", frac
        return f"supervised from scratch ({frac:.0%} labels)", "scratch", frac

    def predict(self, variables, extra, images):
        """Class logits [B, num_classes] of float images in [0, 1] (the model's own head)."""
        _, logits = self.net.apply(variables, images, train=False)
        return logits
