"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers").

Presets (``--config=experiments/mocov3.py:PRESET``):

tiny             CI smoke test: a few steps of a tiny ResNet on Fashion-MNIST.
                 python -m jssl.main --config=experiments/mocov3.py:tiny --workdir=/tmp/t
                 any CPU, seconds; no metric expected.
fashion_mnist    Pretrain without labels on the 60 000 Fashion-MNIST training images (the same
                 encoder and data as simclr.py:fashion_mnist_tiny), then kNN and linear probes on
                 the 10 000 test images. Projector and predictor 256 → 64 (BN, last BN without
                 affine, as the official heads), T = 0.2 (the ViT value, also solo-learn's
                 CIFAR ResNet value; the official T = 1.0 belongs to the batch-4096 ResNet-50
                 recipe), LARS base lr 0.3, wd 1e-6 (solo-learn's CIFAR values), momentum
                 0.99 → 1 cosine, BYOL views without blur at 28 px (as byol.py:fashion_mnist).
                 python -m jssl.main --config=experiments/mocov3.py:fashion_mnist \
                     --workdir=runs/mocov3_fashion_mnist
                 2-core CPU (2026-12-02, load ~3.5, tests running beside it): 13.3 min of
                 training; linear probe 78.90 %, kNN (k=20) 80.62 %, linear probe with 1 %
                 labels 72.61 % (docs/RESULTS.md).
imagenet_vits16  The paper's ViT-S/16 recipe (§4, official CONFIG.md): batch 4096, AdamW lr
                 1.5e-4 × B/256, wd 0.1, 300 epochs with 40 warm-up epochs, cosine; momentum
                 0.99 → 1 cosine, T = 0.2; projector 3 layers 4096 → 256, predictor 2 layers
                 4096 → 256; 2-D sin-cos positions, 12 heads (MoCo v3's ViT-S), random frozen
                 patch projection (``--stop-grad-conv1``: the patch embedding never updates);
                 224 px BYOL views with crop scale 0.08–1. Deviation: jssl never decays
                 biases and norm params (MoCo v3's AdamW decays all params).
                 python -m jssl.main --config=experiments/mocov3.py:imagenet_vits16 \
                     --workdir=gs://...
                 Paper: 73.2 % top-1 linear probe (official CONFIG.md, batch 4096; not
                 measured here); 32 V100 GPUs in the official 4-node setup.
imagenet_r50     The official ResNet-50 100-epoch recipe: batch 4096, LARS lr 0.6 × B/256,
                 wd 1e-6, 10 warm-up epochs, momentum 0.99 → 1 cosine, T = 1.0, projector and
                 predictor 2 layers 4096 → 256, crop scale 0.2–1.
                 python -m jssl.main --config=experiments/mocov3.py:imagenet_r50 \
                     --workdir=gs://...
                 Official: 68.9 % top-1 linear probe at 100 epochs (72.8 % at 300 epochs with
                 lr 0.3; not measured here); 16 V100 GPUs.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "imagenet_vits16", "imagenet_r50")
IMAGENET_TRAIN = configs.IMAGENET_TRAIN


def _mlp(hidden: int, out: int, layers: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"hidden_dim": hidden, "out_dim": out, "num_layers": layers})


def _imagenet_views(scale: tuple[float, float]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"size": 224, "scale": scale, "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
         "grayscale_p": 0.2, "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)})


def base() -> ml_collections.ConfigDict:
    c = configs.base("mocov3")
    c.model.projector = _mlp(256, 64, 2)
    c.model.predictor = _mlp(256, 64, 2)

    # BYOLParams fields (jssl.augment.recipes): view 1 / view 2 probabilities for blur, solarize.
    c.augment = ml_collections.ConfigDict(
        {"size": 28, "scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
         "grayscale_p": 0.2, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.2)})
    c.loss = ml_collections.ConfigDict({"temperature": 0.2})
    c.method_params = ml_collections.ConfigDict({"momentum": 0.99})

    c.optim = configs.momentum_optim("lars", 0.3, 1e-6)
    return c


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"mocov3_{arg}"
    if arg == "tiny":
        configs.make_tiny(c)
        c.optim.warmup_steps = 1
        c.model.projector = _mlp(32, 16, 2)
        c.model.predictor = _mlp(32, 16, 2)
    elif arg == "fashion_mnist":
        pass
    elif arg == "imagenet_vits16":
        configs.use_imagenet(c)
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "vit", "preset": "s16", "num_heads": 12, "pos_embed": "sincos",
             "pool": "cls", "dtype": "bfloat16"})
        c.model.projector = _mlp(4096, 256, 3)
        c.model.predictor = _mlp(4096, 256, 2)
        c.augment = _imagenet_views((0.08, 1.0))
        c.train.batch_size = 4096
        c.train.steps = 300 * IMAGENET_TRAIN // 4096  # 300 epochs
        c.train.log_every = 100
        c.optim = ml_collections.ConfigDict(
            {"name": "adamw", "base_lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.1,
             "b1": 0.9, "b2": 0.999, "schedule": "cosine",
             "warmup_steps": 40 * IMAGENET_TRAIN // 4096, "end_lr_factor": 0.0,
             # --stop-grad-conv1: the random patch projection stays frozen for the whole run.
             "freeze_pattern": r"^encoder/patch_embed/", "freeze_steps": c.train.steps})
        c.checkpoint.every = 2000
    elif arg == "imagenet_r50":
        configs.use_imagenet(c)
        c.model.projector = _mlp(4096, 256, 2)
        c.model.predictor = _mlp(4096, 256, 2)
        c.augment = _imagenet_views((0.2, 1.0))
        c.loss.temperature = 1.0
        c.train.batch_size = 4096
        c.train.steps = 100 * IMAGENET_TRAIN // 4096  # 100 epochs
        c.train.log_every = 100
        c.optim.base_lr = 0.6
        c.optim.warmup_steps = 10 * IMAGENET_TRAIN // 4096
        c.checkpoint.every = 2000
    else:
        raise ValueError(f"unknown mocov3 preset {arg!r}; use one of {PRESETS}")
    return c
