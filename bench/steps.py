"""Benchmark: jssl train-step throughput, compile time and input-pipeline throughput.

    .venv/bin/python bench/steps.py                        # the CPU presets below
    .venv/bin/python bench/steps.py --only simclr:fashion_mnist --repeats 10

For each experiment preset: the real training loader's first global batch (so the shapes
are the preset's), the state on the default mesh, then

* compile time: ``lower().compile()`` of the two jitted programs (views/masks, update);
* step time: median (and min) over ``--repeats`` timed steps after two warm-up steps,
  each ``block_until_ready``; reported as examples/s of the global batch;
* input pipeline: median time of ``--repeats`` ``next(iterator)`` calls of the grain loader
  (host decode + batching, no device work), as examples/s — a step slower than this is
  compute-bound, a step near it is data-bound.

Writes ``bench/steps.json``; ``python bench/render.py`` turns it into the table in
``docs/performance.md``. Not a test: the machine is shared, so compare ratios taken in one
run, and medians.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import jax

from jssl.data.inputs import train_loader
from jssl.data.pipeline import to_global_batch
from jssl.methods import get_method
from jssl.train.mesh import make_mesh
from jssl.train.optim import make_optimizer
from jssl.train.state import batch_spec, create_state, make_train_step

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("simclr:fashion_mnist", "byol:fashion_mnist", "mae:fashion_mnist", "bert:fortunes",
           "clip:fashion_mnist")


def load_config(spec: str):
    name, preset = spec.split(":")
    path = ROOT / "experiments" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset)


def _median_time(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def bench_preset(spec: str, repeats: int) -> dict:
    config = load_config(spec)
    mesh = make_mesh(config)
    method = get_method(config.method)(config, mesh)
    batch_size = int(config.train.batch_size)
    tx, _, _ = make_optimizer(config.optim, global_batch=batch_size,
                              total_steps=int(config.train.steps))
    iterator = iter(train_loader(config))
    host_batch = next(iterator)
    data_s, _ = _median_time(lambda: next(iterator), repeats)
    batch = to_global_batch(host_batch, mesh, batch_spec(mesh))
    state, shardings = create_state(method, tx, jax.random.key(0), host_batch, mesh)
    step = make_train_step(method, tx, mesh, shardings)

    t0 = time.perf_counter()
    prepare = step.prepare.lower(state.rng, state.step, batch).compile()
    inputs = prepare(state.rng, state.step, batch)
    update = step.update.lower(state, inputs).compile()
    compile_s = time.perf_counter() - t0

    holder = {"state": state}

    def one_step():
        s = holder["state"]
        holder["state"], metrics = update(s, prepare(s.rng, s.step, batch))
        return metrics

    _median_time(one_step, 2)  # warm-up
    median, best = _median_time(one_step, repeats)
    return {"preset": spec, "method": config.method, "batch": batch_size,
            "devices": len(mesh.devices.flat), "device": jax.devices()[0].device_kind,
            "compile_s": round(compile_s, 2),
            "step_median_s": round(median, 4), "step_min_s": round(best, 4),
            "examples_per_s": round(batch_size / median, 1),
            "input_examples_per_s": round(batch_size / data_s, 1), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PRESETS), help="comma-separated name:preset")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5 for a stable median, got {args.repeats}")
    results = []
    for spec in args.only.split(","):
        r = bench_preset(spec, args.repeats)
        print(f"{spec:24s} batch {r['batch']:4d}: {r['examples_per_s']:8.1f} ex/s "
              f"(median {r['step_median_s'] * 1e3:.0f} ms), compile {r['compile_s']:.1f} s, "
              f"input pipeline {r['input_examples_per_s']:.0f} ex/s", flush=True)
        results.append(r)
    report = {
        "command": "python bench/steps.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), "jax": jax.__version__, "nproc": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
