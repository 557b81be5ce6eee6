"""Benchmark: jssl's XLA:CPU flag (``jssl.xla_cpu``) on against off, per CPU preset.

    .venv/bin/python bench/xla_cpu_flag.py
    .venv/bin/python bench/xla_cpu_flag.py --only simclr:fashion_mnist --rounds 5

XLA reads its flags once per process, so each measurement is a fresh worker process
(``--worker``) that builds the preset's jitted update exactly as ``bench/compare.py`` does,
runs two warm-ups and reports the median of ``--repeats`` updates. ``JSSL_XLA_CPU_FLAGS``
is 1 (jssl appends ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``) or 0
(XLA's defaults). The two settings alternate within each of ``--rounds`` rounds, the order
flipping every round, so drifting machine load hits both; the result per setting is the
median over rounds of the per-process medians, and the ratio is on / off (< 1: the flag is
faster). ``os.getloadavg()`` is recorded per worker. Writes ``bench/xla_cpu_flag.json``
(``python bench/render.py`` turns it into the table in ``docs/performance.md``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("simclr:fashion_mnist", "byol:fashion_mnist", "clip:fashion_mnist",
           "mae:fashion_mnist")


def worker(spec: str, repeats: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import jax

    from bench.compare import _jssl_update, _timed
    from bench.steps import load_config

    config = load_config(spec)
    built = _jssl_update(config, 5)
    run = built["run"]
    run(), run()
    times = [_timed(run) for _ in range(repeats)]
    encoder = config.model.get("encoder")
    return {"median_s": statistics.median(times), "min_s": min(times),
            "compile_s": built["compile_s"], "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "conv_impl": (encoder.get("conv_impl", "xla")
                          if encoder is not None and encoder.get("name") == "resnet" else None),
            "load": round(os.getloadavg()[0], 2), "jax": jax.__version__}


def _spawn(spec: str, repeats: int, flag_on: bool) -> dict:
    env = {**os.environ, "JSSL_XLA_CPU_FLAGS": "1" if flag_on else "0"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, __file__, "--worker", spec, "--repeats",
                           str(repeats)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {spec} (flag {'on' if flag_on else 'off'}) failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PRESETS), help="comma-separated name:preset")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    if args.rounds < 1 or args.repeats < 5:
        parser.error(f"need --rounds >= 1 and --repeats >= 5, got {args.rounds}, {args.repeats}")
    sys.path.insert(0, str(ROOT))
    from bench.baselines import hardware

    results = []
    for spec in args.only.split(","):
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for r in range(args.rounds):
            for flag_on in ((True, False) if r % 2 == 0 else (False, True)):
                runs["on" if flag_on else "off"].append(_spawn(spec, args.repeats, flag_on))
        med = {k: statistics.median(x["median_s"] for x in v) for k, v in runs.items()}
        row = {"preset": spec, "median_s": med, "ratio_on_off": round(med["on"] / med["off"], 3),
               "conv_impl": runs["on"][0]["conv_impl"], "runs": runs,
               "load": [x["load"] for v in runs.values() for x in v]}
        print(f"{spec:24s} flag on {med['on'] * 1e3:.0f} ms, off {med['off'] * 1e3:.0f} ms: "
              f"on/off {row['ratio_on_off']:.2f} (load {min(row['load'])}-{max(row['load'])})",
              flush=True)
        results.append(row)
    report = {
        "command": "python bench/xla_cpu_flag.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "worker")),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(), "jax": results[0]["runs"]["on"][0]["jax"] if results else "",
        "flag": next((x["xla_flags"] for r in results for x in r["runs"]["on"]), ""),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
