"""Benchmark: ``jssl.models.conv.materialised`` on the inputs of the CPU ResNets'
convolutions, on against off, per CPU preset.

    .venv/bin/python bench/conv_materialise.py
    .venv/bin/python bench/conv_materialise.py --only byol:fashion_mnist --repeats 21

With ``conv_impl="fast"`` (the ResNet default) every convolution input passes through
``materialised`` on CPU (``jssl.models.conv.MATERIALISE_INPUT``), so that XLA:CPU stores it
once instead of fusing BatchNorm-apply + ReLU into the transposing copy of the kernel
gradient. In one process, per preset, the update is built twice as ``bench/compare.py``
builds it, with the switch on and off; the two updates then alternate, the order flipping
every repeat, so machine load hits both; each gets the median of ``--repeats`` timings, and
the ratio is on / off (< 1: materialising is faster). Writes ``bench/conv_materialise.json``
(rendered by ``python bench/render.py`` into docs/performance.md). Runs under tcmalloc, as
jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("simclr:fashion_mnist", "byol:fashion_mnist", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.conv", "MATERIALISE_INPUT")
