"""SimCLRv2's self-distillation: a fine-tuned teacher labels every training image, and a
student (the same backbone or another) learns from those soft labels (``jssl.methods.distill``).

The third step of "pretrain → fine-tune → distill" (Chen et al. 2020b): only the teacher's
labels are used (the fraction it was fine-tuned on). ``--config.teacher_from`` names the
fine-tuned run's workdir (or several, comma-separated, for an ensemble teacher);
``--config.init_from`` (optional) starts the student's encoder from the SSL run, as
fine-tuning does.

Presets (``--config=experiments/distill.py:PRESET``):

tiny           CI smoke test: a few steps on Fashion-MNIST test data (needs a teacher run).
               python -m jssl.main --config=experiments/distill.py:tiny \
                   --config.teacher_from=/tmp/ft --workdir=/tmp/t
fashion_mnist  The from-scratch recipe of experiments/supervised.py (SGD, momentum 0.9,
               lr 0.1 × B/256, wd 5e-4, cosine, 1000 steps of batch 256, crop + flip) on all
               60 000 training images with the teacher's soft labels, τ = 1, no label
               smoothing.
               python -m jssl.main --config=experiments/distill.py:fashion_mnist \
                   --config.model.encoder.preset=tiny_wide \
                   --config.teacher_from=runs/finetune_1pct_quick \
                   --workdir=runs/distill_1pct_student_scratch
               2-core Xeon, 3.8 min of training: 82.81 % from a teacher of 82.10 % (1 %
               labels); the same student started from the SSL encoder
               (--config.init_from=runs/simclr_fashion_mnist) 82.18 % (docs/RESULTS.md).
               --config.loss.teacher_view=clean: the teacher sees the whole image, the
               student the crop (Noisy Student); default "same" (SimCLRv2).
               --config.loss.mixup=ALPHA: both networks see the mixed view (function
               matching, Beyer et al. 2022; default 0, off). From the ensemble below: α = 1
               81.34 % and α = 0.2 82.81 % at 1000 steps, α = 1 83.23 % at 4000 steps
               (25.8 min) and 83.48 % at 8000 (36.5 min), against 83.45 % without mixup at
               1000 steps: with patience it ties, no more (docs/RESULTS.md).
               --config.teacher_from may name a distilled run (another round), or several
               runs fine-tuned on the same labels, comma-separated: an ensemble teacher (the
               mean of their probabilities, Hinton et al. 2015), e.g.
               --config.teacher_from=runs/finetune_1pct_quick,runs/finetune_1pct_simclr_long_xeon
               (2-core Xeon, 4.4 min: 83.45 % from teachers of 82.10 and 82.40 %;
               distill_1pct_ensemble2; with a third teacher 83.12 %). Each teacher's
               network is built from its run's config.json, so the student may be smaller
               or bigger: --config.model.encoder.preset=tiny from the same two teachers
               82.62 % (distill_1pct_ensemble2_tiny).
imagenet_r50   ResNet-50 on ImageNet-1k from a ResNet-50 teacher fine-tuned on 1 % or 10 % of
               the labels; the supervised preset's recipe (batch 4096, SGD lr 1.6, 90
               epochs), τ = 1; not measured here.
               python -m jssl.main --config=experiments/distill.py:imagenet_r50 \
                   --config.teacher_from=gs://.../finetune_1pct --workdir=gs://...
"""
import importlib.util
import os

import ml_collections


def _supervised():
    """experiments/supervised.py (the recipes this one reuses), loaded by path."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervised.py")
    spec = importlib.util.spec_from_file_location("jssl_experiments_supervised", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRESETS = ("tiny", "fashion_mnist", "imagenet_r50")


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown distill preset {arg!r}; use {', '.join(PRESETS)}")
    c = _supervised().get_config(arg)
    c.method = "distill"
    c.name = f"distill_{arg}"
    c.teacher_from = ml_collections.FieldReference(None, field_type=str)
    c.data.label_fraction = 1.0  # every training image; the labels are not read
    c.loss = ml_collections.ConfigDict({"temperature": 1.0, "teacher_view": "same",
                                        "mixup": 0.0})
    return c
