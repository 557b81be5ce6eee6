"""Profile one CPU preset's jitted update: the thunks XLA runs, largest first.

    .venv/bin/python bench/profile_step.py --preset simclr:fashion_mnist
    JSSL_XLA_CPU_FLAGS=0 .venv/bin/python bench/profile_step.py --preset simclr:fashion_mnist

Builds the update as ``bench/compare.py`` does, warms it up, then records ``--steps``
updates with ``jax.profiler.trace`` (a Perfetto trace) and sums each thunk's duration per
step. Each thunk is printed with the JAX op that made it (the ``op_name`` of its HLO
instruction in the optimised module, or of the first instruction inside its fused
computation), and whether it belongs to the forward or the backward (``transpose(...)``).
Thunks that run inside a library call without an event of their own (e.g. Eigen
convolutions) are not listed. Before tracing, the median wall and process CPU time of the
update are printed: with every core busy, thunk durations overlap and include waiting, so a
change that shortens them need not shorten the update (docs/performance.md, section (9)).
The trace and the HLO dump stay in ``--dir``.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _op_names(hlo: str) -> dict[str, str]:
    """Instruction name -> op_name, fusions resolved through their called computation."""
    first_in: dict[str, str] = {}
    current = None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
        elif current and current not in first_in:
            found = re.search(r'op_name="([^"]+)"', line)
            if found:
                first_in[current] = found.group(1)
    names = {}
    for line in hlo.splitlines():
        head = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if not head:
            continue
        found = re.search(r'op_name="([^"]+)"', line)
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        names[head.group(1)] = (found.group(1) if found
                                else first_in.get(callee.group(1), "") if callee else "")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="simclr:fashion_mnist")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--dir", default="/tmp/jssl_profile_step")
    parser.add_argument("--conv_impl", default=None,
                        help="ResNet conv_impl to profile (default: the preset's)")
    args = parser.parse_args()
    out = Path(args.dir)
    dump = out / "hlo"
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_dump_to={dump}".strip()
    sys.path.insert(0, str(ROOT))
    import jax

    from bench.compare import _jssl_update
    from bench.steps import load_config

    config = load_config(args.preset)
    if args.conv_impl:
        config.model.encoder.conv_impl = args.conv_impl
    run = _jssl_update(config, 5)["run"]
    for _ in range(3):
        run()
    wall, cpu = [], []
    for _ in range(max(args.steps, 5)):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
        for _ in range(args.steps):
            run()
    hlo_file = max(dump.glob("*jit_update*after_optimizations.txt"),
                   key=lambda p: p.stat().st_mtime)
    names = _op_names(hlo_file.read_text())
    trace = max((out / "trace").rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_thunk: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            per_thunk[e["name"]] += e.get("dur", 0) / args.steps / 1e3
    total = sum(per_thunk.values())
    print(f"{args.preset}: {len(per_thunk)} thunks with events, {total:.1f} ms per update "
          f"in them; XLA_FLAGS {os.environ['XLA_FLAGS']!r}")
    print(f"without the profiler: {statistics.median(wall) * 1e3:.0f} ms wall and "
          f"{statistics.median(cpu) * 1e3:.0f} ms process CPU time per update (medians). "
          f"Thunks overlap each other and the Eigen convolutions on the cores, so their "
          f"durations are not the CPU time they cost: judge a change by wall and CPU time.")
    for name, ms in per_thunk.most_common(args.top):
        op = names[name].replace("jit(update)/", "")
        part = "bwd" if "transpose(" in op else "fwd"
        op = re.sub(r"(jvp|transpose)\((.*?)\)", r"\2", op)
        print(f"{ms:8.2f} ms  {part}  {name:32s} {op[:90]}")


if __name__ == "__main__":
    main()
