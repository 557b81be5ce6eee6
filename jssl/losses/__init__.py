"""jssl.losses: pure, sharding-aware self-supervised losses.

Import with ``from jssl import losses``; nothing here imports the trainer, the
models or the data stack. Every loss that compares examples across the batch
takes ``axis_name``: ``None`` for global arrays, or the mesh axis (or tuple of
axes) when called inside ``jax.shard_map``, where it all-gathers what it needs
and returns the global-batch value on every device. See docs/losses.md.
"""
from jssl.losses.contrastive import info_nce, moco, moco_update_queue, nt_xent
from jssl.losses.distillation import (
    byol,
    dino,
    dino_update_center,
    ensemble_logits,
    knowledge_distillation,
)
from jssl.losses.image_text import clip, siglip
from jssl.losses.prediction import classification, mae, masked_lm, next_token, span_corruption
from jssl.losses.sharding import shard_loss
from jssl.losses.speech import (
    codebook_diversity,
    codebook_perplexity,
    sample_negatives,
    wav2vec2,
)

__all__ = [
    "byol",
    "classification",
    "clip",
    "codebook_diversity",
    "codebook_perplexity",
    "dino",
    "dino_update_center",
    "ensemble_logits",
    "info_nce",
    "knowledge_distillation",
    "mae",
    "masked_lm",
    "moco",
    "moco_update_queue",
    "next_token",
    "nt_xent",
    "sample_negatives",
    "shard_loss",
    "siglip",
    "span_corruption",
    "wav2vec2",
]
