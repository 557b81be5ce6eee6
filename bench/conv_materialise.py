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

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("simclr:fashion_mnist", "byol:fashion_mnist", "clip:fashion_mnist")


def _switch(on: bool):
    def setup() -> None:
        from jssl.models import conv

        conv.MATERIALISE_INPUT = on
    return setup


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.preset_args import parse

    args = parse(__doc__, PRESETS, __file__)
    from bench.baselines import write_report
    from bench.compare import alternate_updates
    from jssl.models import conv

    results = []
    for spec in args.only.split(","):
        med = alternate_updates(spec, {"on": _switch(True), "off": _switch(False)},
                                args.repeats)
        conv.MATERIALISE_INPUT = True
        row = {"preset": spec, "median_s": med, "ratio_on_off": round(med["on"] / med["off"], 3),
               "load": round(os.getloadavg()[0], 2)}
        print(f"{spec:22s} update: on {med['on'] * 1e3:.0f} ms, off {med['off'] * 1e3:.0f} ms: "
              f"{row['ratio_on_off']:.3f} (load {row['load']})", flush=True)
        results.append(row)
    write_report(args.out, "conv_materialise.py", args, results=results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so do the updates here
    main()
