"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles").

Presets (``--config=experiments/jigsaw.py:PRESET``):

tiny           CI smoke test: a few steps of a tiny ResNet on Fashion-MNIST, 8 permutations.
               python -m jssl.main --config=experiments/jigsaw.py:tiny --workdir=/tmp/t
               any CPU, seconds; no metric expected.
fashion_mnist  Pretrain without labels on the 60 000 Fashion-MNIST training images (the same
               encoder and data as simclr.py:fashion_mnist_tiny), then kNN and linear probes on the
               10 000 test images. 28 px views (crop scale 0.5–1 + flip) cut into 3 × 3 cells
               of 9 px, 8 px tiles (jitter 1), each tile normalised; 100 permutations
               (maximal Hamming set, minimum distance 6); head Linear-BN-ReLU-Linear on the 9
               concatenated tile features (256 hidden); SGD momentum 0.9, lr 0.1 × B/256,
               wd 5e-4, cosine with 50 warm-up steps. The encoder learns on 8 px tiles and is
               probed on whole 28 px images (the paper transfers conv layers the same way).
               python -m jssl.main --config=experiments/jigsaw.py:fashion_mnist \
                   --workdir=runs/jigsaw_fashion_mnist
               2-core CPU (2026-12-02, load ~4): 6.2 min of training; linear probe 77.87 %,
               kNN (k=20) 79.94 %, linear probe with 1 % labels 71.59 % (docs/RESULTS.md).
imagenet_r50   The paper's puzzle geometry with a ResNet-50 instead of its AlexNet-based
               context-free network: 225 px views (crop scale 0.08–1 + flip), 75 px cells,
               64 px tiles (jitter 11), 1000 permutations chosen from 10 000 random candidates
               (the paper: from all 9!), per-tile normalisation, batch 256, 350 000 steps;
               head 2 layers, 4096 hidden. SGD momentum 0.9, lr 0.1 × B/256 (BN ResNet;
               the paper's AlexNet used 0.01), wd 5e-4, cosine. Not implemented: the paper's
               per-tile colour jitter / grayscale against chromatic-aberration shortcuts.
               python -m jssl.main --config=experiments/jigsaw.py:imagenet_r50 \
                   --workdir=gs://...
               No accuracy quoted: the paper's numbers are AlexNet transfer results.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "imagenet_r50")


def base() -> ml_collections.ConfigDict:
    c = configs.base("jigsaw")
    c.model.head = ml_collections.ConfigDict({"hidden_dim": 256, "num_layers": 2,
                                              "use_bn": True})
    c.method_params = ml_collections.ConfigDict(
        {"num_perms": 100, "grid": 3, "tile_jitter": 1, "normalize_tiles": True,
         "perm_seed": 0, "num_candidates": 10_000})
    c.augment = ml_collections.ConfigDict({"size": 28, "scale": (0.5, 1.0), "flip_p": 0.5})
    c.optim = configs.momentum_optim("sgd", 0.1, 5e-4)
    return c


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"jigsaw_{arg}"
    if arg == "tiny":
        configs.make_tiny(c)
        c.model.head.hidden_dim = 32
        c.method_params.num_perms = 8
        c.optim.warmup_steps = 1
    elif arg == "fashion_mnist":
        pass
    elif arg == "imagenet_r50":
        configs.use_imagenet(c)
        c.model.head.hidden_dim = 4096
        c.method_params.num_perms = 1000
        c.method_params.tile_jitter = 11
        c.augment = ml_collections.ConfigDict({"size": 225, "scale": (0.08, 1.0),
                                               "flip_p": 0.5})
        c.train.batch_size = 256
        c.train.steps = 350_000
        c.train.log_every = 100
        c.optim.warmup_steps = 5000
        c.checkpoint.every = 5000
    else:
        raise ValueError(f"unknown jigsaw preset {arg!r}; use one of {PRESETS}")
    return c
