"""BEiT (Bao et al. 2022): masked prediction of visual tokens from a frozen tokenizer.

Presets (``--config=experiments/beit.py:PRESET``); each needs a trained tokenizer
(``experiments/vqvae.py``) passed as ``--config.tokenizer.workdir``:

tiny             CI smoke test: 4 steps of a tiny ViT (patch 4) on Fashion-MNIST with the
                 ``tiny`` tokenizer (16 codes).
                 python -m jssl.main --config=experiments/vqvae.py:tiny --workdir=/tmp/tok
                 python -m jssl.main --config=experiments/beit.py:tiny \\
                     --config.tokenizer.workdir=/tmp/tok --workdir=/tmp/t
fashion_mnist    ViT dim 128, depth 6, 4 heads, patch 4 (7 × 7 patches + cls), blockwise
                 masks of 20 of the 49 patches (~40 %, blocks of ≥ 4), tokenizer of
                 vqvae.py:fashion_mnist (512 L2-normalised codes of width 8); crop 0.2–1 +
                 flip; AdamW lr 1.5e-3 (at batch 256, linear rule), β2 0.999, wd 0.05, 50
                 warm-up steps, cosine; batch 256, 1000 steps.
                 python -m jssl.main --config=experiments/vqvae.py:fashion_mnist \\
                     --workdir=runs/vqvae_fashion_mnist
                 python -m jssl.main --config=experiments/beit.py:fashion_mnist \\
                     --config.tokenizer.workdir=runs/vqvae_fashion_mnist \\
                     --workdir=runs/beit_fashion_mnist
                 2-core CPU, 2026-12-02 (docs/RESULTS.md, row beit_fashion_mnist): 43 min of
                 training with other runs beside it (0.68 steps/s alone, ~25 min), token
                 accuracy 0.36 on masked patches; linear probe 81.61 %, kNN 78.18 %, 1 %
                 labels 73.00 %. The tokenizer (L2-normalised width-8 codes) used 77 of 512
                 codes in perplexity.
imagenet_b16     The paper's BEiT-B recipe (§2, App. B): ViT-B/16 at 224 px, 75 of 196
                 patches masked blockwise (min block 16), 8192 visual tokens, batch 2048, AdamW
                 lr 1.5e-3, β2 0.999, wd 0.05, 800 epochs with 10 warm-up epochs, bfloat16.
                 Deviations: the tokenizer is jssl's VQ-VAE at 16× on the 224 px image (the
                 paper: DALL-E's dVAE at 8× on 112 px); no relative position bias or layer
                 scale. Paper: 83.2 % top-1 after fine-tuning (BEiT-B, 800 epochs). Builds and
                 traces only.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "imagenet_b16")


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = configs.base("beit")
    c.name = f"beit_{arg}"
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "vit", "preset": "tiny", "patch_size": 4, "dim": 128, "depth": 6,
         "num_heads": 4, "pos_embed": "sincos", "use_cls": True, "pool": "none"})
    c.model.tokenizer = ml_collections.ConfigDict(
        {"preset": "cifar", "patch_size": 4, "codebook_size": 512, "code_dim": 8,
         "hidden": 32, "l2_normalize": True})
    c.tokenizer = ml_collections.ConfigDict(
        {"workdir": ml_collections.FieldReference(None, field_type=str),
         "untrained_ok": False})
    c.method_params = ml_collections.ConfigDict({"mask_ratio": 0.4, "min_block": 4})
    c.augment = ml_collections.ConfigDict({"size": 28, "scale": (0.2, 1.0), "flip_p": 0.5})
    c.optim = ml_collections.ConfigDict(
        {"name": "adamw", "base_lr": 1.5e-3, "lr_scaling": "linear", "weight_decay": 0.05,
         "b1": 0.9, "b2": 0.999, "schedule": "cosine", "warmup_steps": 50,
         "end_lr_factor": 0.0, "clip_grad_norm": 3.0})
    if arg == "tiny":
        configs.make_tiny(c)
        c.model.encoder.update({"dim": 32, "depth": 2, "num_heads": 2})
        c.model.tokenizer = ml_collections.ConfigDict({"preset": "tiny"})
        c.optim.warmup_steps = 1
    elif arg == "fashion_mnist":
        pass
    elif arg == "imagenet_b16":
        configs.use_imagenet(c)
        c.data.channels = 3
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "vit", "preset": "b16", "pos_embed": "sincos", "use_cls": True,
             "pool": "none", "drop_path_rate": 0.1, "dtype": "bfloat16"})
        c.model.tokenizer = ml_collections.ConfigDict(
            {"preset": "beit", "patch_size": 16, "codebook_size": 8192})
        c.method_params = ml_collections.ConfigDict({"mask_ratio": 75 / 196, "min_block": 16})
        c.augment = ml_collections.ConfigDict({"size": 224, "scale": (0.08, 1.0),
                                               "flip_p": 0.5})
        c.train.batch_size = 2048
        c.train.steps = 800 * configs.IMAGENET_TRAIN // 2048
        c.train.log_every = 100
        c.optim.update({"base_lr": 1.5e-3, "lr_scaling": "none",
                        "warmup_steps": 10 * configs.IMAGENET_TRAIN // 2048})
        c.checkpoint.every = 2000
    else:
        raise ValueError(f"unknown beit preset {arg!r}; use one of {PRESETS}")
    return c
