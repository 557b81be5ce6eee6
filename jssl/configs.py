"""Config sections every experiment shares (big_vision's ``configs/common.py`` idea).

An ``experiments/<method>.py`` file builds on ``base(method)`` and sets only what
its method adds (model heads, views, loss, optimizer); ``make_tiny`` and
``use_imagenet`` are the shared parts of its ``tiny`` and paper-scale presets.
"""
from __future__ import annotations

import ml_collections

IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1k's train split
FASHION_MNIST_TRAIN = 60_000  # images in Fashion-MNIST's train split


def base(method: str) -> ml_collections.ConfigDict:
    """Fashion-MNIST offline data, a tiny CIFAR-stem ResNet, 1000 steps of batch 256,
    checkpoints every 500 steps, kNN (k = 20, 200) and linear probes (100/10/1 %)."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.name = method
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": -1})
    c.data = ml_collections.ConfigDict({
        "name": "fashion_mnist_local",
        "data_dir": ml_collections.FieldReference(None, field_type=str),
        "idx_dir": "/usr/share/datasets/fashion-mnist",
        "train_split": "train", "test_split": "test", "in_memory": True, "worker_count": 0})
    c.model = ml_collections.ConfigDict()
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "resnet", "preset": "tiny", "stem": "cifar", "norm": "batch"})
    c.train = ml_collections.ConfigDict(
        {"batch_size": 256, "steps": 1000, "log_every": 50, "grad_accum_steps": 1})
    c.checkpoint = ml_collections.ConfigDict({"every": 500, "keep": 2, "async_save": True})
    c.eval = ml_collections.ConfigDict(
        {"num_classes": 10, "knn_k": (20, 200), "knn_temperature": 0.07,
         "label_fractions": (1.0, 0.1, 0.01)})
    return c


def momentum_optim(name: str, base_lr: float, weight_decay: float, *,
                   warmup_steps: int = 50, **extra) -> ml_collections.ConfigDict:
    """``config.optim`` for LARS / SGD with momentum 0.9: lr = base_lr × B/256, linear
    warm-up then cosine decay to 0; ``extra`` adds fields (clipping, freezing ...)."""
    return ml_collections.ConfigDict(
        {"name": name, "base_lr": base_lr, "lr_scaling": "linear",
         "weight_decay": weight_decay, "momentum": 0.9, "schedule": "cosine",
         "warmup_steps": warmup_steps, "end_lr_factor": 0.0, **extra})


def make_tiny(c: ml_collections.ConfigDict) -> None:
    """The CI smoke-test scale: 4 steps of batch 16, one kNN and one probe."""
    c.train.batch_size = 16
    c.train.steps = 4
    c.train.log_every = 2
    c.checkpoint.every = 2
    c.eval.knn_k = (5,)
    c.eval.label_fractions = (1.0,)


def use_imagenet(c: ml_collections.ConfigDict) -> None:
    """ImageNet-1k through TFDS (array_record) with a bfloat16 ResNet-50."""
    c.data.name = "imagenet2012"
    c.data.test_split = "validation"
    c.data.in_memory = False
    c.data.worker_count = 16
    c.eval.num_classes = 1000
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "resnet", "preset": "resnet50", "stem": "imagenet", "norm": "batch",
         "dtype": "bfloat16"})


def text_base(method: str, packing: str) -> ml_collections.ConfigDict:
    """The Debian fortunes corpus (``jssl.data.fortunes``): a seeded 90/10 split by fortune, a
    4000-piece SentencePiece unigram tokenizer trained on the training split, rows of 64
    tokens; AdamW; held-out pretext numbers and category probes (100 % / 10 % labels)."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.name = method
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": -1})
    c.data = ml_collections.ConfigDict({
        "name": "fortunes", "modality": "text", "root": "/usr/share/games/fortunes",
        "categories": ml_collections.FieldReference(None, field_type=tuple),
        "test_fraction": 0.1, "split_seed": 0, "vocab_size": 4000, "model_type": "unigram",
        "num_sentinels": 0, "seq_len": 64, "packing": packing, "cls": True,
        "cache_dir": ml_collections.FieldReference(None, field_type=str), "worker_count": 0})
    c.train = ml_collections.ConfigDict(
        {"batch_size": 64, "steps": 1000, "log_every": 50, "grad_accum_steps": 1})
    c.checkpoint = ml_collections.ConfigDict({"every": 500, "keep": 2, "async_save": True})
    c.optim = ml_collections.ConfigDict(
        {"name": "adamw", "base_lr": 1e-3, "lr_scaling": "none", "weight_decay": 0.01,
         "b1": 0.9, "b2": 0.98, "eps": 1e-6, "schedule": "cosine", "warmup_steps": 100,
         "end_lr_factor": 0.0, "clip_grad_norm": 1.0})
    c.eval = ml_collections.ConfigDict({"label_fractions": (1.0, 0.1)})
    return c


def make_text_tiny(c: ml_collections.ConfigDict) -> None:
    """The CI scale: four small categories, 256 pieces, rows of 32, 4 steps of batch 16."""
    c.data.categories = ("debian", "goedel", "magic", "medicine")
    c.data.vocab_size = 256
    c.data.seq_len = 32
    c.train.batch_size = 16
    c.train.steps = 4
    c.train.log_every = 2
    c.checkpoint.every = 2
    c.optim.warmup_steps = 1
    c.eval.label_fractions = (1.0,)


def use_text_tfds(c: ml_collections.ConfigDict, name: str, *, vocab_size: int,
                  seq_len: int) -> None:
    """A TFDS text dataset (``jssl.data.text_tfds``: one document a row, tokenized on the host
    by ``data.tokenizer_path``); no built-in evaluation (the fortunes probes do not apply)."""
    c.data.name = name
    c.data.text_feature = "text"
    c.data.tokenizer_path = ml_collections.FieldReference(None, field_type=str)
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.train_split = "train"
    c.data.vocab_size = vocab_size
    c.data.seq_len = seq_len
    c.data.packing = "documents"
    c.data.worker_count = 16
    c.train.log_every = 100
    c.checkpoint.every = 5000
    del c["eval"]
