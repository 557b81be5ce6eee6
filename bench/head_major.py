"""Benchmark: attention computed head-major on CPU (``jssl.models.head_major``) against the
einsum forms, per CPU preset with attention.

    .venv/bin/python bench/head_major.py
    .venv/bin/python bench/head_major.py --only mae:fashion_mnist --repeats 21

On CPU, ``jssl.models.vit.attention_fn("xla")`` is ``head_major_attention`` (Flax's
operations in Flax's order on q, k, v transposed to [B, H, L, D] first) and the text
transformers' attention (``jssl.models.transformer.MultiHeadAttention``: BERT, GPT, T5,
CLIP's text tower) forms its two products the same way, so that XLA:CPU runs them as
batched matmuls over leading batch axes (``jssl.models.head_major.ENABLED``). In one
process, per preset, the update is built with the switch True and False (the einsum forms),
the two alternate (order flipping every repeat), median of ``--repeats`` each, ratio on /
off. The forward alone is in ``bench/attention.py``. Writes ``bench/head_major.json``
(rendered by ``python bench/render.py`` into docs/performance.md). Runs under tcmalloc, as
jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("mae:fashion_mnist", "dino:fashion_mnist", "ijepa:fashion_mnist",
           "bert:fortunes", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.head_major", "ENABLED")
