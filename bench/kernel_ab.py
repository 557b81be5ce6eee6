"""Shared by the one-kernel comparisons of XLA:CPU against PyTorch (``bench/dots.py``,
``bench/attention.py``): their command line, and medians over alternating blocks of calls."""
from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path


def parse(doc: str, script: str) -> argparse.Namespace:
    """``--repeats`` (≥ 3), ``--block`` (≥ 5) and ``--out`` (default: ``script``'s .json)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--out", default=str(Path(script).with_suffix(".json")))
    args = parser.parse_args()
    if args.repeats < 3 or args.block < 5:
        parser.error(f"need --repeats >= 3 and --block >= 5, got {args.repeats}, {args.block}")
    return args


def torch_all_cores():
    """PyTorch (this environment's, else ``bench/.venv-torch``'s) with one intra-op thread
    per core; imports jssl first, so its XLA:CPU flags are set before JAX's backend starts."""
    import jssl  # noqa: F401
    from bench.compare import import_torch

    torch = import_torch()
    torch.set_num_threads(os.cpu_count())
    return torch


def pooled_medians(runs: dict[str, Callable[[], object]], repeats: int,
                   block: int) -> dict[str, float]:
    """Two warm-up calls each, then ``repeats`` rounds of one block of ``block`` back-to-back
    calls per runner (order flipping every round), each block's first two calls dropped;
    the median seconds per runner over the rest."""
    from bench.compare import _timed

    for run in runs.values():
        run(), run()
    pooled: dict[str, list[float]] = {who: [] for who in runs}
    for i in range(repeats):
        for who in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            pooled[who] += [_timed(runs[who]) for _ in range(block)][2:]
    return {who: statistics.median(v) for who, v in pooled.items()}


def row(med: dict[str, float], **fields) -> dict:
    """A result row: ``fields``, the medians, their ratio jax / torch and the load."""
    return {**fields, "median_s": med, "ratio_jax_torch": round(med["jax"] / med["torch"], 2),
            "load": round(os.getloadavg()[0], 2)}
