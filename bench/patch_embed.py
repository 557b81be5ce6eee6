"""Benchmark: the ViT patch embedding as one matmul over ``patchify``'d pixels
(``jssl.models.vit.PATCH_EMBED_MATMUL``) against the stride-p convolution, per CPU preset.

    .venv/bin/python bench/patch_embed.py
    .venv/bin/python bench/patch_embed.py --only mae:fashion_mnist --repeats 21

Same params and the same sum of products (``tests/test_models_vit.py`` compares tokens and
gradients). In one process, per preset, the update is built twice as ``bench/compare.py``
builds it, with the switch on and off; the two alternate, the order flipping every repeat;
ratio = median on / median off (< 1: the matmul is faster). On a GPU ``bench/gpu_mfu.py
--set jssl.models.vit.PATCH_EMBED_MATMUL=False`` gives the other side. Writes
``bench/patch_embed.json`` (rendered by ``python bench/render.py``). Runs under tcmalloc.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("mae:fashion_mnist", "clip:fashion_mnist", "mocov3:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.vit", "PATCH_EMBED_MATMUL")
