"""Benchmark: ``jssl.models.dense.dense_dot_general`` (the kernel gradient as one dot over
the rows of both operands) in the transformers' dense layers, on against off, per CPU preset.

    .venv/bin/python bench/dense_grad.py
    .venv/bin/python bench/dense_grad.py --only mae:fashion_mnist --repeats 21

On CPU every dense layer of jssl's ViT and text transformers computes dW = xᵀ·dy as one
``dot_general`` contracting axis 0 of x and dy as stored (``jssl.models.dense.
DIRECT_KERNEL_GRAD``); off, the layers use ``lax.dot_general`` and JAX's transpose rule, for
which XLA:CPU writes a transposed copy of dy. In one process, per preset, the update
is built twice as ``bench/compare.py`` builds it, with the switch on and off; the two updates
then alternate, the order flipping every repeat, so machine load hits both; each gets the
median of ``--repeats`` timings, and the ratio is on / off (< 1: the switch is faster).
Writes ``bench/dense_grad.json`` (rendered by ``python bench/render.py`` into
docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("mae:fashion_mnist", "bert:fortunes", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.dense", "DIRECT_KERNEL_GRAD")
