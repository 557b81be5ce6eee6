"""Benchmark: the CPU ResNets' BatchNorm, ``jssl.models.norm.BatchNorm`` (sums over wide rows)
against ``flax.linen.BatchNorm``, per CPU preset.

    .venv/bin/python bench/batch_norm.py
    .venv/bin/python bench/batch_norm.py --only byol:fashion_mnist --repeats 21

A ResNet's BatchNorm on CPU spends its time in column sums over the N·H·W positions: the
statistics Σx and Σx² in the forward, Σdy and Σdy·x̂ (the γ and β gradients) and the
statistics' own gradients in the backward. With 8 or 16 channels (the 28×28 stages of the
``tiny`` ResNets) XLA:CPU sums an [M, 8] array about half as fast as the same buffer viewed as
[M/16, 128]; jssl's BatchNorm uses that view (``jssl.models.norm``). In one process, per
preset, the update is built with ``jssl.models.resnet.JSSL_BATCHNORM`` on (jssl's layer) and
off (``nn.BatchNorm``, same variables), the two alternate (order flipping every repeat),
median of ``--repeats`` each, ratio on / off. Writes ``bench/batch_norm.json`` (rendered by
``python bench/render.py`` into docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("byol:fashion_mnist", "simclr:fashion_mnist", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.resnet", "JSSL_BATCHNORM")
