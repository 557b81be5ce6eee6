"""Raw-pixel baselines on Fashion-MNIST (60 000 train / 10 000 test).

Every self-supervised number should beat these. Features are the 784 raw
pixels scaled to [0, 1] (``/255``), with the protocols of ``jssl.evaluate``:

* linear probe (:func:`jssl.evaluate.linear.linear_probe`, seed 0) with 100 %,
  10 % and 1 % of the train labels;
* weighted kNN (:func:`jssl.evaluate.knn.knn_accuracy`) with k=20, T=0.07
  (solo-learn) and k=200, T=0.1 (lightly / VISSL), all train labels.

Command (80 s of process CPU time on 2 AMD EPYC cores; 3.5-5.5 min wall on
the shared, loaded machine it was measured on)::

    .venv/bin/python bench/baselines.py [--data-dir DIR] [--out bench/baselines.json]

Writes (merging) ``--out`` with hardware, date, wall time, process CPU time
(all threads; on a shared machine ``cpu_time_s / nproc`` approximates the idle
wall time) and command in every record's extras, and prints the table.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jssl.evaluate.knn import knn_accuracy
from jssl.evaluate.linear import linear_probe
from jssl.evaluate.report import Result, format_table, write_results

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10


def read_idx(path: str) -> np.ndarray:
    """Array stored in a gzipped IDX file (big-endian header; uint8 data only)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x (60000, 784) float32 in [0, 1], train_y, test_x, test_y)."""
    def part(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
        return x.reshape(x.shape[0], -1).astype(np.float32) / 255.0, y.astype(np.int32)

    return (*part("train"), *part("t10k"))


def hardware() -> dict[str, object]:
    """CPU model (from /proc/cpuinfo) with its widest x86 vector extension
    (``"Intel(R) Xeon(R) Processor, AVX-512"``: XLA's and PyTorch's CPU kernels differ most
    between AVX2 and AVX-512 machines), usable cores, jax backend and versions."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        flags = next((set(ln.split(":", 1)[1].split()) for ln in lines
                      if ln.startswith("flags")), set())
        cpu = models[0] if models else cpu
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
        cpu = f"{cpu}, {isa}" if isa else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }


def write_report(out: str, script: str, args: argparse.Namespace, **fields) -> None:
    """Write a benchmark's JSON to ``out``: the command that made it (``script`` with the
    flags in ``args`` but ``--out``), the date, :func:`hardware`, jax, the malloc, ``fields``."""
    flags = " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out")
    report = {"command": f"python bench/{script} {flags}",
              "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "hardware": hardware(), "jax": jax.__version__,
              "malloc": os.environ.get("LD_PRELOAD") or "glibc", **fields}
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "baselines.json"))
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    xtr, ytr, xte, yte = load(args.data_dir)
    common = {
        "backbone": "raw pixels (/255)",
        "hardware": hardware(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
    }
    results = []
    for fraction in (1.0, 0.1, 0.01):
        cpu0 = time.process_time()
        out = linear_probe(xtr, ytr, xte, yte, num_classes=NUM_CLASSES,
                           label_fraction=fraction, seed=0)
        extras = {**common, "wall_time_s": out["wall_time_s"],
                  "cpu_time_s": time.process_time() - cpu0,
                  **{k: out[k] for k in ("weight_decay", "num_labeled", "iterations",
                                         "grad_norm", "converged", "train_accuracy")},
                  "val_accuracy": {str(k): v for k, v in out["val_accuracy"].items()}}
        results.append(Result("raw pixels", "linear", "top1_accuracy", out["accuracy"],
                              label_fraction=fraction, dataset="fashion_mnist", extras=extras))
        print(f"linear probe {fraction:g}: {out['accuracy']:.4f} ({out['wall_time_s']:.1f} s)",
              flush=True)
    for k, temperature in ((20, 0.07), (200, 0.1)):
        t0, cpu0 = time.perf_counter(), time.process_time()
        acc = knn_accuracy(xtr, ytr, xte, yte, num_classes=NUM_CLASSES, k=k,
                           temperature=temperature)
        wall = time.perf_counter() - t0
        results.append(Result("raw pixels", "knn", "top1_accuracy", acc, dataset="fashion_mnist",
                              params={"k": k, "temperature": temperature},
                              extras={**common, "wall_time_s": wall,
                                      "cpu_time_s": time.process_time() - cpu0}))
        print(f"kNN k={k} T={temperature}: {acc:.4f} ({wall:.1f} s)", flush=True)

    total = time.perf_counter() - t_start
    results = [Result(**{**r.to_dict(), "extras": {**r.extras, "total_wall_time_s": total}})
               for r in results]
    write_results(args.out, results)
    print(format_table(results))
    print(f"total wall time {total:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
