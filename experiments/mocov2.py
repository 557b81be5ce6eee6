"""MoCo v2 (He et al. 2020; Chen et al. 2020, "Improved Baselines with Momentum Contrastive
Learning").

Presets (``--config=experiments/mocov2.py:PRESET``):

tiny           CI smoke test: a few steps of a tiny ResNet on Fashion-MNIST, queue of 64 keys,
               shuffle-BN groups of 4.
               python -m jssl.main --config=experiments/mocov2.py:tiny --workdir=/tmp/t
               any CPU, seconds; no metric expected.
fashion_mnist  Pretrain without labels on the 60 000 Fashion-MNIST training images (the same
               encoder and data as simclr.py:fashion_mnist_tiny), then kNN and linear probes on the
               10 000 test images. Queue K = 4096, T = 0.2, MLP head 256 → 64 (no BN, as MoCo
               v2), shuffle-BN groups of 32, SGD lr 0.06 × B/256, wd 5e-4, cosine (the values
               of MoCo's CIFAR-10 demo), momentum m = 0.99: 1000 steps are too short for 0.999,
               whose key encoder averages over the last ~1000 steps.
               python -m jssl.main --config=experiments/mocov2.py:fashion_mnist \
                   --workdir=runs/mocov2_fmnist
               2-core CPU; about 1.5× simclr.py:fashion_mnist_tiny (one more encoder forward, no
               backward); wall time and accuracy not measured yet.
imagenet_r50   The paper's ImageNet recipe (Chen et al. 2020, Table 1, 200 epochs): ResNet-50,
               batch 256, SGD momentum 0.9, lr 0.03 cosine without warm-up, weight decay 1e-4,
               K = 65536, T = 0.2, m = 0.999, MLP head 2048 → 128, augmentation with blur p 0.5,
               crop scale 0.2–1, 224 px; shuffle BN over groups of 32 (the paper's 8 GPUs × 32).
               python -m jssl.main --config=experiments/mocov2.py:imagenet_r50 --workdir=gs://...
               Paper: 53 h on 8 V100 GPUs (Table 3); 67.5 % top-1 linear probe at 200 epochs,
               71.1 % at 800 epochs (not measured here).
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "imagenet_r50")
IMAGENET_TRAIN = configs.IMAGENET_TRAIN


def base() -> ml_collections.ConfigDict:
    c = configs.base("mocov2")
    c.model.projector = ml_collections.ConfigDict(
        {"hidden_dim": 256, "out_dim": 64, "num_layers": 2, "use_bn": False, "last_bn": False})

    # MoCoV2Params fields (jssl.augment.recipes); no blur at 28 px, as SimCLR's quickstart.
    c.augment = ml_collections.ConfigDict(
        {"size": 28, "scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8,
         "grayscale_p": 0.2, "blur_p": 0.0})
    c.loss = ml_collections.ConfigDict({"temperature": 0.2})
    c.method_params = ml_collections.ConfigDict(
        {"queue_size": 4096, "momentum": 0.99, "momentum_schedule": "constant",
         "shuffle_bn_group": 32})

    c.optim = configs.momentum_optim("sgd", 0.06, 5e-4, warmup_steps=0)
    return c


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"mocov2_{arg}"
    if arg == "tiny":
        configs.make_tiny(c)
        c.model.projector.hidden_dim = 32
        c.model.projector.out_dim = 16
        c.method_params.queue_size = 64
        c.method_params.shuffle_bn_group = 4
    elif arg == "fashion_mnist":
        pass
    elif arg == "imagenet_r50":
        configs.use_imagenet(c)
        c.model.projector = ml_collections.ConfigDict(
            {"hidden_dim": 2048, "out_dim": 128, "num_layers": 2, "use_bn": False,
             "last_bn": False})
        c.augment = ml_collections.ConfigDict(
            {"size": 224, "scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8,
             "grayscale_p": 0.2, "blur_p": 0.5})
        c.method_params = ml_collections.ConfigDict(
            {"queue_size": 65536, "momentum": 0.999, "momentum_schedule": "constant",
             "shuffle_bn_group": 32})
        c.train.batch_size = 256
        c.train.steps = 200 * IMAGENET_TRAIN // 256  # 200 epochs
        c.train.log_every = 100
        c.optim.base_lr = 0.03
        c.optim.weight_decay = 1e-4
        c.checkpoint.every = 5000
    else:
        raise ValueError(f"unknown mocov2 preset {arg!r}; use tiny, fashion_mnist, imagenet_r50")
    return c
