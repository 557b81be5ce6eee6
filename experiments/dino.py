"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Presets (``--config=experiments/dino.py:PRESET``):

tiny             CI smoke test: a few steps of a tiny ViT (patch 4, learned positions
                 interpolated to the local crops) on Fashion-MNIST, 2 global 28 px + 2 local
                 12 px crops, 64 prototypes.
                 python -m jssl.main --config=experiments/dino.py:tiny --workdir=/tmp/t
                 any CPU, seconds; no metric expected.
fashion_mnist    Pretrain without labels on the 60 000 Fashion-MNIST training images (the same
                 tiny ResNet and data as simclr.py:fashion_mnist_tiny: its global pooling takes any
                 crop size), then kNN and linear probes of the *teacher* on the 10 000 test
                 images. 2 global 28 px crops (scale 0.4–1) + 6 local 12 px crops (0.05–0.4:
                 DINO's 96/224 ratio), no blur at 28 px; head 256 → 64 → 1024 prototypes
                 with BatchNorm (as DINO's ResNet runs; last layer weight-normalised, norm
                 fixed); τ_s 0.1, τ_t 0.04 (DINO's vanilla value, no warm-up), centre momentum
                 0.9, teacher momentum 0.996 → 1 cosine; LARS base lr 0.3 after a 1-epoch
                 warm-up, wd 1e-6 (as byol.py:fashion_mnist), gradient clipping 3.0 (per
                 param, as DINO), last layer frozen for the first epoch (234 steps). Without
                 the head's BatchNorm (and with a 50-step warm-up) it collapsed: teacher
                 entropy reached ln 1024 by step 250, linear probe 69.86 %.
                 python -m jssl.main --config=experiments/dino.py:fashion_mnist \
                     --workdir=runs/dino_fashion_mnist
                 2-core CPU (2026-12-02, load ~2, other runs beside it): 18.1 min of training;
                 linear probe 73.89 %, kNN (k=20) 76.35 %, linear probe with 1 % labels
                 63.95 % (docs/RESULTS.md).
imagenet_vits16  The official "boosted" ViT-S/16 run (README: 300 epochs, τ_t 0.04 → 0.07 over
                 30 epochs, ``--norm_last_layer false``) with main_dino.py's defaults: batch
                 1024 (16 GPUs × 64), AdamW lr 0.0005 × B/256, 10 warm-up epochs, cosine to
                 1e-6, wd 0.04 → 0.4 cosine, clipping 3.0, last layer frozen 1 epoch, teacher
                 momentum 0.996 → 1, centre momentum 0.9, out_dim 65536, head 2048 → 256,
                 stochastic depth 0.1 in the student, learned positions (bicubically
                 interpolated for the local crops); 2 × 224 px global (0.4–1) and 10 × 96 px
                 local crops (0.05–0.4; the paper's 2×224² + 10×96², main_dino.py defaults
                 to 8).
                 python -m jssl.main --config=experiments/dino.py:imagenet_vits16 \
                     --workdir=gs://...
                 README: 2.6 days on 16 V100 GPUs; 73.3 % k-NN, ~76.1 % linear top-1 (not
                 measured here).
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "imagenet_vits16")
IMAGENET_TRAIN = configs.IMAGENET_TRAIN
FMNIST_TRAIN = 60_000


def _head(out_dim: int, hidden: int, bottleneck: int, norm_last_layer: bool = True,
          use_bn: bool = False):
    return ml_collections.ConfigDict(
        {"out_dim": out_dim, "hidden_dim": hidden, "bottleneck_dim": bottleneck,
         "num_layers": 3, "use_bn": use_bn, "norm_last_layer": norm_last_layer})


def base() -> ml_collections.ConfigDict:
    c = configs.base("dino")
    # BatchNorm in the head, as DINO's ResNet runs: without it this preset collapsed (teacher
    # entropy → ln 1024 by step 250 at lr 0.3, rising toward it at lr 0.1; 2026-12-02).
    c.model.head = _head(1024, 256, 64, use_bn=True)

    # size = global crop size; the rest are DINOParams fields (jssl.augment.recipes).
    c.augment = ml_collections.ConfigDict(
        {"size": 28, "local_size": 12, "num_local": 6, "global_scale": (0.4, 1.0),
         "local_scale": (0.05, 0.4), "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
         "grayscale_p": 0.2, "global_blur_p": (0.0, 0.0), "global_solarize_p": (0.0, 0.2),
         "local_blur_p": 0.0})
    c.method_params = ml_collections.ConfigDict(
        {"momentum_teacher": 0.996, "center_momentum": 0.9, "student_temp": 0.1,
         "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "teacher_temp_warmup_steps": 0})

    steps_per_epoch = FMNIST_TRAIN // c.train.batch_size
    c.optim = configs.momentum_optim(
        "lars", 0.3, 1e-6, warmup_steps=steps_per_epoch, clip_grad_norm=3.0,
        clip_per_param=True, freeze_pattern="last_layer", freeze_steps=steps_per_epoch)
    return c


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"dino_{arg}"
    if arg == "tiny":
        configs.make_tiny(c)
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "vit", "preset": "tiny", "pos_embed": "learned", "interpolate_pos": True,
             "pool": "cls"})
        c.model.head = _head(64, 32, 16)
        c.augment.num_local = 2
        c.method_params.teacher_temp = 0.07
        c.method_params.teacher_temp_warmup_steps = 2
        c.optim = ml_collections.ConfigDict(
            {"name": "adamw", "base_lr": 5e-4, "lr_scaling": "linear", "weight_decay": 0.04,
             "weight_decay_end": 0.4, "schedule": "cosine", "warmup_steps": 1,
             "end_lr_factor": 0.0, "clip_grad_norm": 3.0, "clip_per_param": True,
             "freeze_pattern": "last_layer", "freeze_steps": 1})
    elif arg == "fashion_mnist":
        pass
    elif arg == "imagenet_vits16":
        configs.use_imagenet(c)
        batch, epochs = 1024, 300
        steps_per_epoch = IMAGENET_TRAIN // batch
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "vit", "preset": "s16", "pos_embed": "learned", "interpolate_pos": True,
             "pool": "cls", "drop_path_rate": 0.1, "dtype": "bfloat16"})
        c.model.head = _head(65536, 2048, 256, norm_last_layer=False)
        c.augment = ml_collections.ConfigDict(
            {"size": 224, "local_size": 96, "num_local": 10, "global_scale": (0.4, 1.0),
             "local_scale": (0.05, 0.4), "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
             "grayscale_p": 0.2, "global_blur_p": (1.0, 0.1), "global_solarize_p": (0.0, 0.2),
             "local_blur_p": 0.5})
        c.method_params.teacher_temp = 0.07
        c.method_params.teacher_temp_warmup_steps = 30 * steps_per_epoch
        c.train.batch_size = batch
        c.train.steps = epochs * steps_per_epoch
        c.train.log_every = 100
        peak = 5e-4 * batch / 256
        c.optim = ml_collections.ConfigDict(
            {"name": "adamw", "base_lr": 5e-4, "lr_scaling": "linear", "weight_decay": 0.04,
             "weight_decay_end": 0.4, "schedule": "cosine",
             "warmup_steps": 10 * steps_per_epoch, "end_lr_factor": 1e-6 / peak,
             "clip_grad_norm": 3.0, "clip_per_param": True,
             "freeze_pattern": "last_layer", "freeze_steps": steps_per_epoch})
        c.checkpoint.every = 2000
    else:
        raise ValueError(f"unknown dino preset {arg!r}; use one of {PRESETS}")
    return c
