"""Benchmark: throughput of the on-device SimCLR view recipe (two views per image).

    .venv/bin/python bench/augment.py            # 256 images at 28x28 and 224x224, CPU
    .venv/bin/python bench/augment.py --sizes 28 --repeats 10

For each (size, channels): compile time (lower + XLA compile), then one warm-up call,
then ``--repeats`` timed calls with fresh keys (block_until_ready); prints and writes the
median as images/s (each image -> 2 views) to bench/augment.json. Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from jssl.augment.recipes import simclr_views


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_one(size: int, channels: int, batch: int, repeats: int) -> dict:
    images = jax.device_put(np.random.default_rng(0).uniform(
        size=(batch, size, size, channels)).astype(np.float32))
    fn = jax.jit(lambda k, x: simclr_views(k, x, size))
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = fn.lower(key, images).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(jax.random.fold_in(key, 10_000), images))  # warm-up
    times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, i)
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(k, images))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"recipe": "simclr_views", "size": size, "out_size": size, "channels": channels,
            "batch": batch, "repeats": repeats, "compile_s": round(compile_s, 3),
            "median_s": round(median, 4), "min_s": round(min(times), 4),
            "images_per_s": round(batch / median, 1),
            "views_per_s": round(2 * batch / median, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="28,224", help="comma-separated square sizes")
    parser.add_argument("--channels", default="3", help="comma-separated channel counts")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5 for a stable median, got {args.repeats}")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for c in (int(c) for c in args.channels.split(",")):
            r = bench_one(size, c, args.batch, args.repeats)
            print(f"simclr_views {size}x{size}x{c} -> 2 x {size}x{size}, batch {args.batch}: "
                  f"{r['images_per_s']:.1f} images/s ({r['views_per_s']:.1f} views/s), "
                  f"median {r['median_s'] * 1e3:.1f} ms, compile {r['compile_s']:.2f} s",
                  flush=True)
            results.append(r)
    report = {
        "command": "python bench/augment.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__, "nproc": os.cpu_count(), "cpu": _cpu_model(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
