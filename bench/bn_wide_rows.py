"""Benchmark: jssl's BatchNorm statistics summed over wide rows on CPU, on against off, per
CPU preset.

    .venv/bin/python bench/bn_wide_rows.py
    .venv/bin/python bench/bn_wide_rows.py --only byol:fashion_mnist --repeats 21

``jssl.models.norm.BatchNorm`` sums Σx and Σx² of an [..., C] input with C < 128 over an
[M/k, k·C] view of it on CPU (``jssl.models.norm.WIDE_ROWS``; k·C ≤ 128), then folds the k
partial sums per channel. Off, it sums the [M, C] columns directly. In one process, per
preset, the update is built with the switch on and off, the two alternate (order flipping
every repeat), median of ``--repeats`` each, ratio on / off. Writes
``bench/bn_wide_rows.json`` (rendered by ``python bench/render.py`` into
docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("byol:fashion_mnist", "simclr:fashion_mnist", "clip:fashion_mnist")

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.norm", "WIDE_ROWS")
