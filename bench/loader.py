"""Benchmark: the training loader's host time per batch, whole-batch gathers vs grain's reads.

    .venv/bin/python bench/loader.py [--batches 256,512] [--repeats 21]

For the in-memory Fashion-MNIST training split (the CPU presets' data), two loaders of the
same stream are built: the default one, which reads each batch with one gather
(``jssl.data.sampler``: ``vectorized``), and ``make_loader(..., vectorize=False)``, which
reads record by record through grain's ``DataLoader``. They are timed alternately, one
``next()`` each per repetition after two warm-ups, and the batches are checked equal.
Writes ``bench/loader.json`` (``python bench/render.py`` renders the table in
docs/performance.md) with medians and the 1-minute load average of every repetition.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.baselines import hardware  # noqa: E402
from jssl import configs  # noqa: E402
from jssl.data.host_transforms import DecodeImage  # noqa: E402
from jssl.data.inputs import load_source  # noqa: E402
from jssl.data.pipeline import make_loader  # noqa: E402


def bench(batch: int, repeats: int, source) -> dict:
    kw = dict(global_batch_size=batch, seed=0, shuffle=True, num_epochs=None,
              process_index=0, process_count=1, transforms=(DecodeImage("uint8"),))
    iters = {"gather": iter(make_loader(source, **kw)),
             "grain": iter(make_loader(source, vectorize=False, **kw))}
    times: dict[str, list[float]] = {k: [] for k in iters}
    loads = []
    for rep in range(repeats + 2):
        out = {}
        for k, it in iters.items():
            t0 = time.perf_counter()
            out[k] = next(it)
            if rep >= 2:
                times[k].append(time.perf_counter() - t0)
        np.testing.assert_array_equal(out["gather"]["image"], out["grain"]["image"])
        if rep >= 2:
            loads.append(round(os.getloadavg()[0], 2))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "repeats": repeats, "median_s": med,
            "examples_per_s": {k: round(batch / v, 1) for k, v in med.items()},
            "speedup": round(med["grain"] / med["gather"], 1), "load_avg_1m": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,512")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default=str(ROOT / "bench" / "loader.json"))
    args = parser.parse_args()
    data = configs.base("simclr").data
    source = load_source(data, data.train_split)
    results = [bench(int(b), args.repeats, source) for b in args.batches.split(",")]
    for r in results:
        print(f"batch {r['batch']}: gather {r['median_s']['gather'] * 1e3:.1f} ms, grain "
              f"{r['median_s']['grain'] * 1e3:.1f} ms ({r['speedup']}x)", flush=True)
    report = {"command": "python bench/loader.py " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
              "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "cpu": hardware()["cpu"], "nproc": os.cpu_count(), "jax": jax.__version__,
              "dataset": f"{data.name}:{data.train_split} (in memory)", "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
