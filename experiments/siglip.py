"""SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training") on
Fashion-MNIST images with template captions (``jssl.data.captions``).

Presets (``--config=experiments/siglip.py:PRESET``):

tiny           CI smoke test: a few steps of a tiny ResNet + 1-layer text transformer.
               python -m jssl.main --config=experiments/siglip.py:tiny --workdir=/tmp/t
               any CPU, seconds; no metric expected.
fashion_mnist  The same data, towers, captions, optimizer and evaluation as
               clip.py:fashion_mnist, with the sigmoid loss (t init 10, b init -10, t
               clamped at 100) in place of the softmax one.
               python -m jssl.main --config=experiments/siglip.py:fashion_mnist \
                   --workdir=runs/siglip_fmnist
               2-core CPU: 3.7 min of training (800 steps); zero-shot 81.07 % (in
               docs/RESULTS.md with recall@1/5).
coco_b16       The paper's B/16 scale (§4): ViT-B/16 image tower at 224 px, B-size text
               tower (here CLIP's 12 × 512, 77 tokens, 49 408-word vocabulary), batch 32 768,
               AdamW lr 1e-3 (no batch scaling), wd 1e-4, β2 0.95 (the paper's setting for
               stable large-batch training), cosine with 10 % warm-up; chunked ring loss
               (§3.3). Data: TFDS coco_captions, 32 epochs of its 82 783 training images
               (the paper trains on WebLI, billions of examples).
               Data, tokenizer and retrieval evaluation as clip.py:coco_b16
               (``jssl.data.image_text_tfds``; train the tokenizer once, see there):
               python -m jssl.main --config=experiments/siglip.py:coco_b16 --workdir=gs://... \
                   --config.data.tokenizer_path=coco16k.model
               Not measured (COCO is not available offline).
"""
import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("clip_experiment", Path(__file__).with_name(
    "clip.py"))
clip_experiment = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clip_experiment)

PRESETS = ("tiny", "fashion_mnist", "coco_b16")


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = clip_experiment.base("siglip")
    c.name = f"siglip_{arg}"
    if arg == "tiny":
        clip_experiment.make_tiny(c)
    elif arg == "fashion_mnist":
        pass
    elif arg == "coco_b16":
        clip_experiment.use_b16_scale(c, "coco_captions", clip_experiment.COCO_TRAIN)
        c.optim = ml_collections.ConfigDict(
            {"name": "adamw", "base_lr": 1e-3, "lr_scaling": "none", "weight_decay": 1e-4,
             "b1": 0.9, "b2": 0.95, "eps": 1e-8, "schedule": "cosine",
             "warmup_steps": c.train.steps // 10, "end_lr_factor": 0.0})
    else:
        raise ValueError(f"unknown siglip preset {arg!r}; use one of {PRESETS}")
    return c
