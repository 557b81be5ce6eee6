"""Profile one ViT-B/16 train step on a GPU: where the update's device time goes.

    python bench/gpu_profile.py --case mae:1024:cudnn --out /tmp/gpu_profile

Builds the case as ``bench/gpu_mfu.py`` does (the real-scale preset at the given global
batch, synthetic images, the on-device ``prepare`` run once), warms the compiled ``update``
up, then records ``--steps`` updates with ``jax.profiler.trace``. Every device event (a GPU
kernel or a memory copy, read from the trace's XSpace with ``jax.profiler.ProfileData``) is
attached to the HLO instruction that launched it (its ``hlo_op`` stat) and to that
instruction's kind in the optimised module dumped with ``--xla_dump_to``: a cuBLAS GEMM, a
cuDNN fused attention, a Triton GEMM fusion, a reduction (``kInput``) or elementwise
(``kLoop``) fusion, a copy, and so on. Printed and written to ``<out>/summary.json``:

* the update's wall time per step and the device-busy time (union of the kernels' intervals
  on all streams): their difference is the time the GPU waits for the host;
* time per kind, with the FLOPs of the matmul kinds read from the HLO shapes, so the matmul
  throughput (TFLOP/s while in GEMM kernels) sits beside its share of the step;
* the ``--top`` instructions and kernels by time, with the JAX op that made each.

``<out>/update_hlo.txt.gz`` keeps the optimised module for reading off the device.
With ``--plane /host:CPU`` it runs on the CPU backend too (a test of the parsing; there the
XLA thunks are host events named after their instructions).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")


def _dims(shape: str) -> list[int]:
    m = _SHAPE.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _dot_flops(line: str, out_shape: str, shapes: dict[str, str]) -> float:
    """2·(output elements)·(contracted size) of a dot / GEMM custom call, from its shapes."""
    operands = re.findall(r"%([\w.\-]+)", line.split("(", 1)[1]) if "(" in line else []
    lhs = shapes.get(operands[0], "") if operands else ""
    contract = re.search(r"lhs_contracting_dim\w*[\"=:\s\[{]*([\d,\s\"]+)", line)
    if not lhs or not contract:
        return 0.0
    ldims = _dims(lhs)
    k = 1
    for d in re.findall(r"\d+", contract.group(1)):
        if int(d) < len(ldims):
            k *= ldims[int(d)]
    out = 1
    for d in _dims(out_shape):
        out *= d
    return 2.0 * out * k


def hlo_index(hlo: str) -> dict[str, dict]:
    """Instruction name -> {"kind", "op_name", "flops"} for the optimised module ``hlo``.

    Kinds: ``gemm`` (cuBLAS custom call), ``attention`` (cuDNN fused attention),
    ``gemm_fusion`` (a fusion around a dot: Triton's on GPU, YNNPACK's on CPU),
    ``fusion:<kLoop|kInput|...>``, else the opcode.
    Fusions take their op_name from the first instruction inside the fused computation that
    has one, so the JAX op that started the fusion is named."""
    first_op: dict[str, str] = {}
    comp_lines: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    shapes: dict[str, str] = {}
    current = None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            continue
        m = _INSTR.match(line)
        if m:
            shapes[m.group(1)] = m.group(2)
            if current and m.group(3) == "dot":
                comp_lines[current].append((line, m.group(2)))
        if current and current not in first_op:
            found = re.search(r'op_name="([^"]+)"', line)
            if found:
                first_op[current] = found.group(1)
    dot_flops = {c: sum(_dot_flops(line, out, shapes) for line, out in lines)
                 for c, lines in comp_lines.items()}
    index = {}
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, out_shape, opcode = m.group(1), m.group(2), m.group(3)
        op = re.search(r'op_name="([^"]+)"', line)
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        op_name = op.group(1) if op else first_op.get(callee.group(1), "") if callee else ""
        kind, flops = opcode, 0.0
        if opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line)
            target = target.group(1) if target else ""
            if "gemm" in target.lower() or "matmul" in target.lower():
                kind, flops = "gemm", _dot_flops(line, out_shape, shapes)
            elif "fmha" in target or "cudnn" in target.lower():
                kind = "attention"
            else:
                kind = f"custom-call:{target}"
        elif opcode == "fusion":
            fk = re.search(r"kind=(k\w+)", line)
            fk = fk.group(1) if fk else "?"
            inner = dot_flops.get(callee.group(1), 0.0) if callee else 0.0
            if fk == "kCustom" and inner:
                kind, flops = "gemm_fusion", inner
            else:
                kind = f"fusion:{fk}"
        elif opcode == "dot":
            kind, flops = "dot", _dot_flops(line, out_shape, shapes)
        index[name] = {"kind": kind, "op_name": op_name, "flops": flops}
    return index


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    busy, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy


def kernel_owner(kernel: str, instr: str, index: dict[str, dict]) -> str:
    """The instruction a kernel belongs to: its ``hlo_op`` stat when that names one in the
    module, else (inside a command buffer) the fusion whose name the kernel carries
    (``loop_add_fusion_15`` is ``loop_add_fusion.15``); "" for library kernels."""
    if instr in index:
        return instr
    for name in (re.sub(r"_(\d+)$", r".\1", kernel), kernel):
        if name in index:
            return name
    return ""


def library_of(kernel: str) -> str:
    """A library kernel's maker, from its name (cuBLAS's ``nvjet``/``xmma``/``gemm`` kernels,
    cuDNN's ``sdpa``/``cudnn`` ones)."""
    name = kernel.lower()
    if "cudnn" in name or "sdpa" in name or "flash" in name:
        return "cuDNN"
    if any(t in name for t in ("nvjet", "gemm", "xmma", "cublas", "cutlass")):
        return "cuBLAS"
    return "library"


def summarise(xspace: Path, index: dict[str, dict], plane_prefix: str, steps: int,
              wall_s: float, top: int) -> dict:
    """Device time per kind / instruction / kernel, per step, from one XSpace file."""
    from jax.profiler import ProfileData
    data = ProfileData.from_file(str(xspace))
    per_instr: collections.Counter = collections.Counter()
    per_kernel: collections.Counter = collections.Counter()
    kernel_instr: dict[str, str] = {}
    kernel_count: collections.Counter = collections.Counter()
    intervals = []
    planes = [plane.name for plane in data.planes]
    for plane in data.planes:
        if not plane.name.startswith(plane_prefix):
            continue
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                instr = str(stats.get("hlo_op", "")) or (ev.name if ev.name in index else "")
                if not instr and plane_prefix.startswith("/host"):
                    continue
                dur = ev.duration_ns
                intervals.append((ev.start_ns, ev.start_ns + dur))
                per_instr[instr or "(no hlo_op)"] += dur
                per_kernel[ev.name] += dur
                kernel_instr.setdefault(ev.name, kernel_owner(ev.name, instr, index))
                kernel_count[ev.name] += 1
    per_kind: collections.Counter = collections.Counter()
    flops_kind: collections.Counter = collections.Counter()
    for instr, ns in per_instr.items():
        info = index.get(instr, {"kind": "unknown", "flops": 0.0})
        per_kind[info["kind"]] += ns
        flops_kind[info["kind"]] += info["flops"] * steps
    busy_ms = _union_ns(intervals) / 1e6 / steps
    kinds = []
    for kind, ns in per_kind.most_common():
        ms = ns / 1e6 / steps
        row = {"kind": kind, "ms": ms}
        if flops_kind[kind]:
            row["tflop"] = flops_kind[kind] / steps / 1e12
            row["tflop_per_s"] = flops_kind[kind] / (ns / 1e9) / 1e12
        kinds.append(row)
    instrs = [{"instr": i, "ms": ns / 1e6 / steps, "kind": index.get(i, {}).get("kind", "?"),
               "op": _short(index.get(i, {}).get("op_name", ""))}
              for i, ns in per_instr.most_common(top)]
    kernels = [{"kernel": k[:160], "ms": ns / 1e6 / steps, "launches": kernel_count[k] // steps,
                "kind": index.get(kernel_instr[k], {}).get("kind", library_of(k)),
                "op": _short(index.get(kernel_instr[k], {}).get("op_name", ""))}
               for k, ns in per_kernel.most_common(top)]
    return {"wall_ms": wall_s * 1e3 / steps, "busy_ms": busy_ms,
            "events_per_step": sum(kernel_count.values()) // steps,
            "kinds": kinds, "instructions": instrs, "kernels": kernels, "planes": planes}


def _short(op: str) -> str:
    op = op.replace("jit(update)/", "")
    part = "bwd " if "transpose(" in op else ""
    return part + re.sub(r"(jvp|transpose)\((.*?)\)", r"\2", op)[:110]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="mae:1024:cudnn", help="method:batch:attention")
    ap.add_argument("--preset", default="",
                    help="another config spec than the method's real-scale preset")
    ap.add_argument("--set", default="", help="as bench/gpu_mfu.py's --set")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--plane", default="/device:GPU:0")
    ap.add_argument("--out", default="/tmp/gpu_profile")
    args = ap.parse_args()
    out = Path(args.out)
    dump = out / "hlo_dump"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_dump_to={dump} --xla_dump_hlo_module_re=.*update.*"
                               ).strip()
    import gpu_mfu
    import jax
    method, batch, attention, case_sets = gpu_mfu.parse_cases(
        argparse.Namespace(cases=args.case))[0]
    sets = gpu_mfu.apply_sets(",".join(filter(None, (args.set, case_sets))))
    if args.preset:
        gpu_mfu.SPECS[method] = args.preset
    config, state, step, data = gpu_mfu.build_case(method, batch, attention)
    inputs = step.prepare(state.rng, state.step, data)
    update = step.update.lower(state, inputs).compile()
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = update(holder["state"], inputs)
        jax.block_until_ready(metrics)

    for _ in range(3):
        run()
    with jax.profiler.trace(str(out / "trace")):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run()
        wall = time.perf_counter() - t0
    hlo_file = max(dump.glob("*update*after_optimizations.txt"), key=lambda p: p.stat().st_size)
    hlo = hlo_file.read_text()
    with gzip.open(out / "update_hlo.txt.gz", "wt") as f:
        f.write(hlo)
    xspace = max((out / "trace").rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    summary = summarise(xspace, hlo_index(hlo), args.plane, args.steps, wall, args.top)
    summary.update(date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                   case=args.case, preset=gpu_mfu.SPECS[method], device=jax.devices()[0]
                   .device_kind, jax=jax.__version__, steps=args.steps,
                   model_tflop_per_step=gpu_mfu.vit_flops(method, config) * batch / 1e12,
                   xla_flags=os.environ["XLA_FLAGS"], sets={k: repr(v) for k, v in sets.items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{args.case}: wall {summary['wall_ms']:.1f} ms/step, device busy "
          f"{summary['busy_ms']:.1f} ms, {summary['events_per_step']} events/step, model "
          f"{summary['model_tflop_per_step']:.2f} TFLOP/step")
    for row in summary["kinds"]:
        extra = (f"  {row['tflop']:.3f} TFLOP at {row['tflop_per_s']:.1f} TFLOP/s"
                 if "tflop" in row else "")
        print(f"  {row['ms']:8.2f} ms  {row['kind']}{extra}")
    print("top instructions:")
    for row in summary["instructions"]:
        print(f"  {row['ms']:7.2f} ms  {row['kind']:14s} {row['instr'][:28]:28s} {row['op']}")
    print("top kernels:")
    for row in summary["kernels"][:30]:
        print(f"  {row['ms']:7.2f} ms  x{row['launches']:<4d} {row['kernel'][:60]:60s} "
              f"{row['op'][:70]}")


if __name__ == "__main__":
    main()
