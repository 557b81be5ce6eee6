"""Benchmark: the CPU train step with glibc's malloc, with glibc tuned by ``mallopt``, and with
tcmalloc (what ``jssl.cpu_malloc`` preloads), per CPU preset: update time, page faults and
resident memory.

    .venv/bin/python bench/cpu_malloc.py
    .venv/bin/python bench/cpu_malloc.py --only simclr:fashion_mnist --rounds 5

malloc is set up once per process, so each measurement is a fresh worker process
(``--worker``) that builds the preset's jitted update exactly as ``bench/compare.py`` does,
runs ``--warmup`` updates (the heap reaches its steady size in the first few), then reports
the median of ``--repeats`` updates, the minor page faults per update (``getrusage``) and
the resident set size after them (``/proc/self/statm``). Settings:

* ``glibc``: glibc's defaults (blocks above 32 MiB, and large blocks of worker threads,
  are mapped afresh at every step);
* ``mallopt``: glibc with :data:`MALLOPT` applied before JAX starts: one arena, no
  ``mmap``, trimming only beyond 2 GiB (the alternative jssl measured and did not adopt);
* ``tcmalloc``: ``LD_PRELOAD`` of gperftools' tcmalloc, when ``--tcmalloc`` names an
  existing library (Debian: ``libtcmalloc-minimal4``): what ``python -m jssl.main`` and
  ``jssl`` restart themselves with on CPU (``jssl.cpu_malloc``).

The settings alternate within each of ``--rounds`` rounds, the order rotating every round,
so drifting machine load hits all of them; the result per setting is the median over rounds
of the per-process medians, and ``ratio`` is each setting / ``glibc``. Writes
``bench/cpu_malloc.json`` (``python bench/render.py`` turns it into the table in
``docs/performance.md``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jssl.cpu_malloc import find_tcmalloc  # noqa: E402  (no JAX import)

PRESETS = ("simclr:fashion_mnist", "byol:fashion_mnist", "clip:fashion_mnist",
           "mae:fashion_mnist", "bert:fortunes")
#: glibc mallopt (param, value): M_ARENA_MAX = 1, M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2 GiB - 1
MALLOPT = ((-8, 1), (-4, 0), (-1, 2**31 - 1))


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(spec: str, warmup: int, repeats: int) -> dict:
    if os.environ.get("BENCH_MALLOPT") == "1":
        import ctypes

        libc = ctypes.CDLL(None)
        if not all(libc.mallopt(p, v) == 1 for p, v in MALLOPT):
            raise RuntimeError("glibc rejected a mallopt setting")
    sys.path.insert(0, str(ROOT))
    import jax

    from bench.compare import _jssl_update, _timed
    from bench.steps import load_config

    config = load_config(spec)
    run = _jssl_update(config, 5)["run"]
    for _ in range(warmup):
        run()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = [_timed(run) for _ in range(repeats)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"median_s": statistics.median(times), "min_s": min(times),
            "faults_per_update": round(faults / repeats), "rss_mb": round(_rss_mb()),
            "load": round(os.getloadavg()[0], 2), "jax": jax.__version__}


def _spawn(spec: str, setting: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "BENCH_MALLOPT": "1" if setting == "mallopt" else "0"}
    env.pop("LD_PRELOAD", None)
    if setting == "tcmalloc":
        env["LD_PRELOAD"] = args.tcmalloc
    proc = subprocess.run([sys.executable, __file__, "--worker", spec, "--warmup",
                           str(args.warmup), "--repeats", str(args.repeats)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {spec} ({setting}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PRESETS), help="comma-separated name:preset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tcmalloc", default=find_tcmalloc() or "",
                        help="tcmalloc library ('' to skip)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.warmup, args.repeats)))
        return
    if args.rounds < 1 or args.repeats < 5:
        parser.error(f"need --rounds >= 1 and --repeats >= 5, got {args.rounds}, {args.repeats}")
    sys.path.insert(0, str(ROOT))
    from bench.baselines import hardware

    settings = ["glibc", "mallopt"]
    if args.tcmalloc and Path(args.tcmalloc).is_file():
        settings.append("tcmalloc")
    results = []
    for spec in args.only.split(","):
        runs: dict[str, list[dict]] = {s: [] for s in settings}
        for r in range(args.rounds):
            for s in settings[r % len(settings):] + settings[:r % len(settings)]:
                runs[s].append(_spawn(spec, s, args))
        med = {s: statistics.median(x["median_s"] for x in v) for s, v in runs.items()}
        row = {"preset": spec, "median_s": med,
               "ratio": {s: round(med[s] / med["glibc"], 3) for s in settings},
               "faults_per_update": {s: statistics.median(x["faults_per_update"] for x in v)
                                     for s, v in runs.items()},
               "rss_mb": {s: statistics.median(x["rss_mb"] for x in v) for s, v in runs.items()},
               "runs": runs, "load": [x["load"] for v in runs.values() for x in v]}
        print(f"{spec:24s} " + ", ".join(
            f"{s} {med[s] * 1e3:.0f} ms ({row['ratio'][s]:.2f}, "
            f"{row['faults_per_update'][s]:.0f} faults, {row['rss_mb'][s]:.0f} MB)"
            for s in settings) + f" (load {min(row['load'])}-{max(row['load'])})", flush=True)
        results.append(row)
    report = {
        "command": "python bench/cpu_malloc.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "worker", "tcmalloc")),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(), "jax": results[0]["runs"]["glibc"][0]["jax"] if results else "",
        "settings": settings, "warmup": args.warmup, "repeats": args.repeats,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
