"""Supervised baselines of the label-efficiency experiment: from scratch and fine-tuning.

The same backbone, data and views (crop + flip) as the SSL presets, trained with labels on a
class-balanced fraction of the training split (``--config.data.label_fraction``, the same
subsets as the linear probes' for the same seed). With ``--config.init_from=WORKDIR`` the
encoder starts from an SSL run's encoder (full fine-tuning); without it, from scratch.

Presets (``--config=experiments/supervised.py:PRESET``):

tiny           CI smoke test: a few steps on Fashion-MNIST test data.
               python -m jssl.main --config=experiments/supervised.py:tiny --workdir=/tmp/t
fashion_mnist  From scratch, SGD (momentum 0.9, lr 0.1 × B/256, wd 5e-4, cosine), label
               smoothing 0.1; 100 % labels by default, 1 % / 10 % with
               --config.data.label_fraction=0.01 (or 0.1); fine-tune an SSL run with
               --config.init_from=runs/simclr_fmnist --config.optim.base_lr=0.02; linear
               probe, then fine-tune (LP-FT) with --config.optim.freeze_pattern=^encoder/
               --config.optim.freeze_steps=K (K = 200 from runs/simclr_fashion_mnist at 1 %:
               80.76 %, below plain fine-tuning's 82.10 %; docs/RESULTS.md, lpft_1pct_quick);
               SimCLRv2's fine-tuning from the middle of the head with
               --config.model.projector.keep_hidden=1 (the classifier on the SSL run's first
               projector block; from runs/simclr_fashion_mnist at 1 %: 80.87 %, also below
               82.10 %; finetune_1pct_quick_head1).
               python -m jssl.main --config=experiments/supervised.py:fashion_mnist \
                   --config.data.label_fraction=0.01 --workdir=runs/scratch_1pct
               2-core CPU; wall time and accuracy: docs/RESULTS.md (measured, with commands).
finetune_1pct, finetune_10pct
               Fine-tuning an SSL run with SimCLR's semi-supervised recipe (Chen et al. 2020,
               App. B.5), fixed before any run here: Nesterov SGD (momentum 0.9), lr 0.05 ×
               B/256, no warm-up, cosine, no weight decay and no label smoothing ("we do not
               use any regularization"), crop + flip only; 60 epochs of the 1 % subset (141
               steps) or 30 epochs of the 10 % subset (703 steps). Needs --config.init_from.
               python -m jssl.main --config=experiments/supervised.py:finetune_1pct \
                   --config.model.encoder.preset=tiny_wide \
                   --config.init_from=runs/simclr_fashion_mnist_long \
                   --workdir=runs/finetune_recipe_1pct_simclr_long
               2-core CPU (load 4.4-4.6): 1.9 min (1 %) / 12 min (10 %) of training; from
               simclr_fashion_mnist_long: 80.24 % / 87.89 %, below the fashion_mnist recipe's
               fine-tuning (82.15 / 88.99 %; docs/RESULTS.md).
imagenet_r50   Supervised ResNet-50 on ImageNet-1k (Goyal et al. 2017 recipe: batch 4096, SGD
               lr 0.1 × B/256 = 1.6, 5 warm-up epochs, 90 epochs, wd 1e-4 off BN/bias, label
               smoothing 0.1); 76 % top-1 expected (not measured here).
               python -m jssl.main --config=experiments/supervised.py:imagenet_r50 \
                   --workdir=gs://...
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "finetune_1pct", "finetune_10pct", "imagenet_r50")
#: SimCLR App. B.5: epochs of fine-tuning on the labelled subset
FINETUNE_EPOCHS = {"finetune_1pct": (0.01, 60), "finetune_10pct": (0.1, 30)}
#: LP-FT (Kumar et al. 2022) with --config.optim.freeze_pattern=^encoder/ and
#: --config.optim.freeze_steps=K: the encoder's params get no update for the first K steps
#: (only the classifier trains; the encoder's BatchNorm statistics still update), then all
#: train. Off by default.
LP_FT = {"freeze_pattern": "", "freeze_steps": 0}


def base() -> ml_collections.ConfigDict:
    c = configs.base("supervised")
    c.init_from = ml_collections.FieldReference(None, field_type=str)
    c.data.label_fraction = 1.0
    # SimCLRv2's fine-tuning from the middle of the head: keep_hidden = 1 puts the classifier
    # on the SSL run's first projector block (Linear-BN-ReLU, copied with the encoder); the
    # other fields must match that run's projector (these are simclr.py's CPU presets').
    c.model.projector = ml_collections.ConfigDict(
        {"hidden_dim": 256, "num_layers": 2, "use_bn": True, "keep_hidden": 0})
    c.augment = ml_collections.ConfigDict(
        {"size": 28, "scale": (0.2, 1.0), "flip_p": 0.5, "jitter_p": 0.0})
    c.loss = ml_collections.ConfigDict({"label_smoothing": 0.1})
    c.optim = configs.momentum_optim("sgd", 0.1, 5e-4, **LP_FT)
    return c


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"supervised_{arg}"
    if arg == "tiny":
        configs.make_tiny(c)
        c.optim.warmup_steps = 1
    elif arg == "fashion_mnist":
        pass
    elif arg in FINETUNE_EPOCHS:
        fraction, epochs = FINETUNE_EPOCHS[arg]
        c.data.label_fraction = fraction
        c.init_required = True
        c.loss.label_smoothing = 0.0
        c.optim = configs.momentum_optim("sgd", 0.05, 0.0, warmup_steps=0, nesterov=True,
                                         **LP_FT)
        c.train.steps = round(epochs * fraction * configs.FASHION_MNIST_TRAIN
                              / c.train.batch_size)
    elif arg == "imagenet_r50":
        configs.use_imagenet(c)
        c.augment = ml_collections.ConfigDict(
            {"size": 224, "scale": (0.08, 1.0), "flip_p": 0.5, "jitter_p": 0.0})
        c.optim.weight_decay = 1e-4
        c.train.batch_size = 4096
        c.train.steps = 90 * configs.IMAGENET_TRAIN // 4096
        c.train.log_every = 100
        c.optim.warmup_steps = 5 * configs.IMAGENET_TRAIN // 4096
        c.checkpoint.every = 2000
    else:
        raise ValueError(f"unknown supervised preset {arg!r}; use {', '.join(PRESETS)}")
    return c
