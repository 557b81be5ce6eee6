"""Benchmark: jssl's native CPU attention kernel (``jssl.models.native_attention``) against
XLA's attention, per CPU preset with attention.

    .venv/bin/python bench/native_attention.py
    .venv/bin/python bench/native_attention.py --only mae:fashion_mnist --repeats 21

On a one-device CPU, float32 self-attention without an additive bias runs as one fused
custom call, forward and backward (jssl/native/attention.cc, built on first use), instead of
XLA's batched matmuls, softmax and elementwise passes (head-major, ``jssl.models.head_major``):
the ViTs' (MAE, DINO, I-JEPA, MoCo v3 with a ViT) and the text transformers' (BERT, GPT,
CLIP's text tower; with their masks and attention dropout).
In one process, per preset, the update is built with ``ENABLED`` True and False, the two
alternate (order flipping every repeat), median of ``--repeats`` each, ratio on / off. One
attention alone against PyTorch's fused SDPA is ``bench/attention.py``. Writes
``bench/native_attention.json`` (rendered by ``python bench/render.py`` into
docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("mae:fashion_mnist", "dino:fashion_mnist", "ijepa:fashion_mnist", "bert:fortunes",
           "gpt:fortunes", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.native_attention", "ENABLED")
