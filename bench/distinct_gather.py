"""Benchmark: MAE's token gathers differentiated as gathers (``take_tokens(distinct=True)``,
``jssl.models.vit.DISTINCT_GATHER_VJP``) against JAX's scatter-add transpose, on CPU.

    .venv/bin/python bench/distinct_gather.py
    .venv/bin/python bench/distinct_gather.py --repeats 21

MAE takes the visible patches (a subset) and un-shuffles the decoder tokens (a permutation):
both gathers have distinct indices, so each token's gradient is one slot's, read back with
the inverse indices; off, the backward is a scatter-add into zeros. Same values bit for bit
(``tests/test_models_vit.py``). In one process the update is built with the switch on and
off, the two alternate, the order flipping every repeat; ratio = median on / median off.
On a GPU ``bench/gpu_mfu.py --set jssl.models.vit.DISTINCT_GATHER_VJP=False`` gives the
other side. Writes ``bench/distinct_gather.json`` (rendered by ``python bench/render.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.switch_ab import main  # noqa: E402

PRESETS = ("mae:fashion_mnist",)

if __name__ == "__main__":
    main(__doc__, __file__, PRESETS, "jssl.models.vit", "DISTINCT_GATHER_VJP")
