"""One-process A/B of a module-level switch in jssl (``conv_materialise``, ``dense_grad``):
per preset, the update built with the switch on and off, alternating, medians, on / off."""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setter(module: str, attr: str, on: bool):
    def setup() -> None:
        setattr(importlib.import_module(module), attr, on)
    return setup


def run(doc: str, script: str, presets: Sequence[str], module: str, attr: str) -> None:
    """Parse the command line (``bench.preset_args``), time each ``--only`` preset's update
    with ``module.attr`` True and False (``bench.compare.alternate_updates``), leave it True,
    print a line per preset and write the JSON report named after ``script``."""
    sys.path.insert(0, str(ROOT))
    from bench.baselines import write_report
    from bench.compare import alternate_updates
    from bench.preset_args import parse

    args = parse(doc, presets, script)
    results = []
    for spec in args.only.split(","):
        med = alternate_updates(spec, {"on": _setter(module, attr, True),
                                       "off": _setter(module, attr, False)}, args.repeats)
        _setter(module, attr, True)()
        row = {"preset": spec, "median_s": med, "ratio_on_off": round(med["on"] / med["off"], 3),
               "load": round(os.getloadavg()[0], 2)}
        print(f"{spec:22s} update: on {med['on'] * 1e3:.0f} ms, off {med['off'] * 1e3:.0f} ms: "
              f"{row['ratio_on_off']:.3f} (load {row['load']})", flush=True)
        results.append(row)
    write_report(args.out, Path(script).name, args, results=results)


def main(doc: str, script: str, presets: Sequence[str], module: str, attr: str) -> None:
    """Entry point of a switch benchmark: restart under tcmalloc first, as jssl's CLI."""
    sys.path.insert(0, str(ROOT))
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()
    run(doc, script, presets, module, attr)
