"""Colorization as a pretext task (Zhang, Isola, Efros 2016, "Colorful Image Colorization").

Colorization needs colour images. Fashion-MNIST is grayscale: there is no target (every
pixel's ab is 0), so there is no ``fashion_mnist`` preset and its results-table row is
"n/a: grayscale data". The method refuses 1-channel data unless
``method_params.allow_grayscale`` is set, which only the smoke test does.

Presets (``--config=experiments/colorization.py:PRESET``):

tiny           CI smoke test of the plumbing only: a few steps of a tiny ResNet on
               Fashion-MNIST with allow_grayscale=True (all targets one class; the loss
               is meaningless). 7 × 7 targets (1/4 of 28 px).
               python -m jssl.main --config=experiments/colorization.py:tiny --workdir=/tmp/t
               any CPU, seconds; no metric expected.
imagenet_r50   ImageNet-1k colour images, ResNet-50 on the L channel, 224 px crops (scale
               0.08–1) + flip, 56 × 56 targets (1/4 resolution, as the paper), 261 in-gamut ab
               classes of the 23 × 23 grid (the paper: 313). Adam β = (0.9, 0.99), L2 weight
               decay 1e-3, the paper's lr 3e-5 at batch 40 scaled linearly to batch 256
               (1.92e-4), 70 312 steps = the paper's 450 000 × 40 images; constant lr after a
               1000-step warm-up. Deviations: ResNet-50 last map upsampled ×8 instead of the
               paper's dilated VGG, no class rebalancing, hard instead of soft-encoded targets
               (see jssl/methods/colorization.py).
               python -m jssl.main --config=experiments/colorization.py:imagenet_r50 \
                   --workdir=gs://...
               No accuracy quoted: the paper's linear probes are on AlexNet conv layers.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "imagenet_r50")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = configs.base("colorization")
    c.name = f"colorization_{arg}"
    c.method_params = ml_collections.ConfigDict(
        {"num_bins": 23, "bin_size": 10.0, "target_size": 56, "allow_grayscale": False})
    c.optim = ml_collections.ConfigDict(
        {"name": "adam", "base_lr": 3e-5 * 256 / 40, "lr_scaling": "linear",
         "weight_decay": 1e-3, "b1": 0.9, "b2": 0.99, "schedule": "constant",
         "warmup_steps": 1000})
    if arg == "tiny":
        configs.make_tiny(c)
        c.method_params.target_size = 7
        c.method_params.allow_grayscale = True
        c.augment = ml_collections.ConfigDict({"size": 28, "scale": (0.5, 1.0), "flip_p": 0.5})
        c.optim.warmup_steps = 1
    elif arg == "imagenet_r50":
        configs.use_imagenet(c)
        c.augment = ml_collections.ConfigDict({"size": 224, "scale": (0.08, 1.0),
                                               "flip_p": 0.5})
        c.train.batch_size = 256
        c.train.steps = 450_000 * 40 // 256
        c.train.log_every = 100
        c.checkpoint.every = 5000
    elif arg == "fashion_mnist":
        raise ValueError("colorization has no fashion_mnist preset: Fashion-MNIST is grayscale, "
                         "so there is no colour to predict; use imagenet_r50 (colour data)")
    else:
        raise ValueError(f"unknown colorization preset {arg!r}; use one of {PRESETS}")
    return c
