"""Benchmark: the CPU ResNets' BatchNorm, ``jssl.models.norm.BatchNorm`` against
``flax.linen.BatchNorm``, per CPU preset.

    .venv/bin/python bench/batch_norm.py
    .venv/bin/python bench/batch_norm.py --only byol:fashion_mnist --repeats 21

jssl's BatchNorm (``jssl.models.norm``) has ``nn.BatchNorm``'s variables but writes the
output as one multiply-add per element, x·a + b with per-channel a and b, where
``nn.BatchNorm`` computes (x − μ)·a + β, and sums the statistics of narrow-channel inputs
over a wide [M/k, k·C] view on CPU (``bench/bn_wide_rows.py`` measures that part alone).
In one process, per preset, the update is built with ``jssl.models.resnet.JSSL_BATCHNORM``
True (jssl's layer; its default None means the same on CPU) and False (``nn.BatchNorm``,
same variables), the two alternate (order flipping every repeat), median of ``--repeats``
each, ratio on / off. Writes ``bench/batch_norm.json`` (rendered by ``python
bench/render.py`` into docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("byol:fashion_mnist", "simclr:fashion_mnist", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.resnet", "JSSL_BATCHNORM")
