"""Benchmark: jssl's CPU train steps next to the same steps written in PyTorch.

    .venv/bin/python bench/compare.py                      # every CPU preset below
    .venv/bin/python bench/compare.py --only simclr:fashion_mnist --repeats 9

For each preset: the real training loader's first global batch, the jssl state and the two
jitted programs of its train step (``prepare``: views/masks, ``update``: forward, backward,
optimizer), then

* compile time of ``prepare`` + ``update`` (``lower().compile()``);
* input pipeline: median time of ``next(iterator)`` of the grain loader, as examples/s;
* jssl ``prepare`` alone (the on-device augmentation), median;
* the update, jssl vs PyTorch: the peer in ``bench/peers/<method>.py`` builds the same
  model, loss and optimizer in PyTorch and steps on the *same* prepared inputs (jssl's
  views, converted to NCHW); the two are timed alternately, one jssl update then one
  PyTorch update, ``--repeats`` times after two warm-ups each, on the same cores in one
  process; PyTorch runs once per ``--torch_threads`` value (on a loaded machine its OpenMP
  pool with 2 threads can be several times slower than with 1); the ratio is
  median(jssl) / the fastest PyTorch median (< 1: jssl faster).
  PyTorch has no counterpart of the on-device ``prepare``, so it is not part of the ratio.
* model size: jssl's trainable parameters (the leaves of ``state.params``) next to the
  peer's (``step.num_params``), recorded as ``params`` with ``params_match``; a mismatch is
  printed as a loud warning (the timing then compares different models); and the loss of
  each one's first update (step 0, same inputs), ``loss_step0``, as a sanity check.

``os.getloadavg()`` is recorded with every timed repetition: the machine may be shared.
Writes ``bench/results.json`` (``python bench/render.py`` turns it into the table in
``docs/performance.md``). Presets whose experiment file or peer is missing or broken are
reported with a note and skipped. PyTorch comes from ``bench/.venv-torch`` (``make bench``
installs ``bench/requirements.txt`` there) or from the running environment.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import os
import site
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.baselines import hardware  # noqa: E402
from bench.steps import load_config  # noqa: E402
from jssl.data.inputs import train_loader  # noqa: E402
from jssl.data.pipeline import to_global_batch  # noqa: E402
from jssl.methods import get_method  # noqa: E402
from jssl.train.mesh import make_mesh  # noqa: E402
from jssl.train.optim import make_optimizer  # noqa: E402
from jssl.train.state import batch_spec, create_state, make_train_step  # noqa: E402

PRESETS = ("simclr:fashion_mnist", "byol:fashion_mnist", "mae:fashion_mnist", "bert:fortunes",
           "clip:fashion_mnist")
TORCH_SITE = ROOT / "bench" / ".venv-torch" / "lib" / (
    f"python{sys.version_info.major}.{sys.version_info.minor}") / "site-packages"


def import_torch():
    """torch from this environment, else from ``bench/.venv-torch`` (appended to the path,
    so this environment's numpy etc. keep precedence)."""
    try:
        import torch
    except ImportError:
        site.addsitedir(str(TORCH_SITE))
        import torch
    return torch


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median(fn, repeats: int) -> float:
    return statistics.median(_timed(fn) for _ in range(repeats))


def alternate(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of ``runs`` (callables that block until done), run in turn
    ``repeats`` times with the order reversed every other round, so load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(repeats):
        for k in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            times[k].append(_timed(runs[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def alternate_jitted(fns: dict, args: tuple, repeats: int) -> dict[str, float]:
    """:func:`alternate` of ``jax.jit(fn)(*args)`` for each of ``fns`` (compiled first)."""
    jitted = {k: jax.jit(f) for k, f in fns.items()}
    for f in jitted.values():
        jax.block_until_ready(f(*args))
    return alternate({k: lambda f=f: jax.block_until_ready(f(*args))
                      for k, f in jitted.items()}, repeats)


def alternate_updates(spec: str, setups: dict, repeats: int) -> dict[str, float]:
    """:func:`alternate` of the preset ``spec``'s update in several variants: for each,
    ``setups[name]()`` points jssl's code at it, then the update is built (as this script
    builds it) and run twice. The caller restores the code afterwards."""
    runs = {}
    for name, setup in setups.items():
        setup()
        runs[name] = _jssl_update(load_config(spec), 5)["run"]
        runs[name](), runs[name]()
    return alternate(runs, repeats)


def _jssl_update(config, repeats: int) -> dict:
    """Build jssl's train step for ``config``; return its timings and a one-update closure."""
    mesh = make_mesh(config)
    method = get_method(config.method)(config, mesh)
    batch_size = int(config.train.batch_size)
    tx, _, _ = make_optimizer(config.optim, global_batch=batch_size,
                              total_steps=int(config.train.steps))
    iterator = iter(train_loader(config))
    host_batch = next(iterator)
    data_s = _median(lambda: next(iterator), repeats)
    batch = to_global_batch(host_batch, mesh, batch_spec(mesh))
    state, shardings = create_state(method, tx, jax.random.key(0), host_batch, mesh)
    step = make_train_step(method, tx, mesh, shardings)

    t0 = time.perf_counter()
    prepare = step.prepare.lower(state.rng, state.step, batch).compile()
    inputs = prepare(state.rng, state.step, batch)
    update = step.update.lower(state, inputs).compile()
    compile_s = time.perf_counter() - t0
    prepare_s = _median(lambda: jax.block_until_ready(prepare(state.rng, state.step, batch)),
                        repeats)
    holder = {"state": state}

    def run():
        holder["state"], metrics = update(holder["state"], inputs)
        return jax.block_until_ready(metrics)

    num_params = sum(int(np.size(x)) for x in jax.tree.leaves(state.params))
    return {"run": run, "inputs": inputs, "num_params": num_params,
            "compile_s": round(compile_s, 2),
            "input_examples_per_s": round(batch_size / data_s, 1),
            "prepare_median_s": round(prepare_s, 4)}


def _with_threads(torch, n: int, step):
    torch.set_num_threads(n)
    return step()


def bench_preset(spec: str, repeats: int, conv_impls: list[str], torch_threads: list[int],
                 torch) -> dict:
    """Time jssl's update (once per conv implementation for ResNet encoders) and the PyTorch
    peer's (once per intra-op thread count), interleaved repetition by repetition."""
    config = load_config(spec)
    batch_size = int(config.train.batch_size)
    encoder = config.model.get("encoder")
    impls = conv_impls if encoder is not None and encoder.get("name") == "resnet" else [None]
    variants = {}
    for impl in impls:
        if impl is not None:
            config.model.encoder.conv_impl = impl
        variants[impl or "default"] = _jssl_update(config, repeats)
    first = next(iter(variants.values()))

    runners = {f"jssl_{k}": v["run"] for k, v in variants.items()}
    note, torch_params = "", None
    try:
        peer = importlib.import_module(f"bench.peers.{config.method}")
        inputs = first["inputs"]
        peer_inputs = peer.torch_inputs(inputs, torch) if hasattr(peer, "torch_inputs") else (
            torch.from_numpy(np.array(inputs["views"])).permute(0, 3, 1, 2).contiguous())
        peer_step = peer.make_step(config, peer_inputs)
        torch_params = getattr(peer_step, "num_params", None)
        for n in torch_threads:
            runners[f"torch_{n}t"] = functools.partial(_with_threads, torch, n, peer_step)
    except ModuleNotFoundError as e:
        note = f"no PyTorch peer ({e})"
    step0 = {k: run() for k, run in runners.items()}  # first warm-up: the step-0 losses
    for run in runners.values():  # second warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    loads = []
    for _ in range(repeats):
        for k, run in runners.items():
            times[k].append(round(_timed(run), 4))
        loads.append(round(os.getloadavg()[0], 2))
    medians = {k: round(statistics.median(t), 4) for k, t in times.items()}
    out = {"preset": spec, "method": config.method, "batch": batch_size,
           "repeats": repeats, "note": note, "load_avg_1m": loads, "times_s": times,
           "update_median_s": medians, "jssl": {},
           "params": {"jssl": first["num_params"], "torch": torch_params}, "loss_step0": {}}
    for k, v in step0.items():  # the first runner of each kind made step 0 on its fresh state
        out["loss_step0"].setdefault(k.split("_")[0], round(float(
            v["loss"] if isinstance(v, dict) else v), 4))
    if torch_params is not None:
        out["params_match"] = torch_params == first["num_params"]
    torch_best = min((v for k, v in medians.items() if k.startswith("torch")), default=None)
    out["torch_best_median_s"] = torch_best
    for k, v in variants.items():
        upd = medians[f"jssl_{k}"]
        out["jssl"][k] = {
            "compile_s": v["compile_s"], "input_examples_per_s": v["input_examples_per_s"],
            "prepare_median_s": v["prepare_median_s"], "update_median_s": upd,
            "step_examples_per_s": round(batch_size / (upd + v["prepare_median_s"]), 1)}
        if torch_best:
            out["jssl"][k]["ratio_vs_torch"] = round(upd / torch_best, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PRESETS), help="comma-separated name:preset")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--conv_impls", default="xla,fast",
                        help="ResNet conv_impl values to time side by side")
    parser.add_argument("--torch_threads", default=f"1,{os.cpu_count()}",
                        help="torch.set_num_threads values to time side by side; the ratio "
                             "is against the fastest")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5 for a stable median, got {args.repeats}")
    torch = import_torch()
    results = []
    for spec in args.only.split(","):
        try:
            r = bench_preset(spec, args.repeats, args.conv_impls.split(","),
                             [int(n) for n in args.torch_threads.split(",")], torch)
        except Exception as e:  # a preset being written by someone else: note it, go on
            print(f"{spec:24s} skipped: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=2)
            results.append({"preset": spec, "skipped": f"{type(e).__name__}: {e}"[:300]})
            continue
        for k, j in r["jssl"].items():
            peer = (f"ratio vs torch {j['ratio_vs_torch']:.2f}" if "ratio_vs_torch" in j
                    else r["note"])
            print(f"{spec:24s} {k:7s} batch {r['batch']:4d}: update "
                  f"{j['update_median_s'] * 1e3:.0f} ms ({peer}), prepare "
                  f"{j['prepare_median_s'] * 1e3:.0f} ms, compile {j['compile_s']:.1f} s, "
                  f"input {j['input_examples_per_s']:.0f} ex/s", flush=True)
        for k, t in r["update_median_s"].items():
            if k.startswith("torch"):
                print(f"{spec:24s} {k:7s} update {t * 1e3:.0f} ms", flush=True)
        n_j, n_t = r["params"]["jssl"], r["params"]["torch"]
        print(f"{spec:24s} params jssl {n_j:,} / torch {n_t if n_t is None else f'{n_t:,}'}; "
              f"step-0 loss " + " / ".join(f"{k} {v:.4f}" for k, v in r["loss_step0"].items()),
              flush=True)
        if r.get("params_match") is False:
            print(f"{'!' * 78}\n{spec:24s} WARNING: PARAMETER COUNTS DIFFER: jssl {n_j:,} vs "
                  f"torch {n_t:,} (ratio jssl/torch {n_j / n_t:.4f}); the peer is not the same "
                  f"model, its timing is not comparable\n{'!' * 78}", flush=True)
        print(f"{spec:24s} median load {statistics.median(r['load_avg_1m']):.1f}", flush=True)
        results.append(r)
    report = {
        "command": "python bench/compare.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), "jax": jax.__version__, "torch": torch.__version__,
        "nproc": os.cpu_count(), "cpu": hardware()["cpu"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": os.environ.get("LD_PRELOAD") or "glibc", "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so do both sides here
    main()
