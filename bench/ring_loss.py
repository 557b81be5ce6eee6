"""Ring vs gather contrastive losses: per-device memory, wall time and exactness.

    python bench/ring_loss.py            # full run (8 simulated CPU devices), ~15 min on 2 cores
    python bench/ring_loss.py --quick    # smaller N, for a smoke run

Memory is ``jax.jit(...).lower(...).compile().memory_analysis()`` of loss+grad
(per-device figures of the SPMD executable), float32, d = 128, P = 8. N is the
global batch: N image/text pairs for CLIP and SigLIP, and N pairs of views
(2N embeddings) for NT-Xent. Wall time: median of timed runs after a warm-up.
Exactness at the largest N: the ring loss and the gradient rows of 256 sampled
examples against a float64 NumPy reference computed block by block.
Writes bench/ring_loss.json; `python bench/render.py` turns it into the table in
docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jssl import losses  # noqa: E402

D = 128
SCALE, BIAS, TEMP = 10.0, -5.0, 0.1
MiB = 2**20


def _inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32)
    y = (x + rng.standard_normal((n, D)).astype(np.float32))
    return [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y)]


def _fn(name: str, mesh, impl: str, block: int):
    if name == "clip":
        fn, extra = losses.clip, (jnp.float32(SCALE),)
    elif name == "siglip":
        fn, extra = losses.siglip, (jnp.float32(SCALE), jnp.float32(BIAS))
    else:
        fn, extra = losses.nt_xent, ()
    kw = dict(temperature=TEMP) if name == "nt_xent" else {}
    f = losses.shard_loss(fn, mesh, batch_argnums=(0, 1), impl=impl, block_size=block, **kw)
    argnums = tuple(range(2 + len(extra)))
    return jax.jit(jax.value_and_grad(f, argnums=argnums)), extra


def _placed(mesh, arrays, extra):
    batch = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    return [jax.device_put(a, batch) for a in arrays] + [jax.device_put(e, rep) for e in extra]


def memory(name, n, impl, mesh, block):
    f, extra = _fn(name, mesh, impl, block)
    x = jax.ShapeDtypeStruct((n, D), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    e = [jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P())) for _ in extra]
    t0 = time.perf_counter()
    compiled = f.lower(x, x, *e).compile()
    m = compiled.memory_analysis()
    hlo = compiled.as_text()
    return {
        "temp_mib": m.temp_size_in_bytes / MiB,
        "argument_mib": m.argument_size_in_bytes / MiB,
        "output_mib": m.output_size_in_bytes / MiB,
        "compile_s": time.perf_counter() - t0,
        "hlo_lines": len(hlo.splitlines()),
        "collective_permute": "collective-permute" in hlo,
        "all_gather": "all-gather" in hlo,
    }


def wall_time(name, n, impl, mesh, block, repeats):
    f, extra = _fn(name, mesh, impl, block)
    args = _placed(mesh, _inputs(n), extra)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), f(*args)


# ------------------------------------------------------------ float64 reference
def _lse_rows(a, b, scale, mask_diag=False, block=4096):
    out = np.empty(len(a))
    for s in range(0, len(a), block):
        logits = scale * a[s:s + block] @ b.T
        if mask_diag:
            idx = np.arange(s, min(s + block, len(a)))
            logits[idx - s, idx] = -np.inf
        m = logits.max(1)
        out[s:s + block] = m + np.log(np.exp(logits - m[:, None]).sum(1))
    return out


def reference(name, x, y, rows):
    """float64 loss and the gradient rows ``rows`` of the first input."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = len(x)
    if name == "clip":
        r, c = _lse_rows(x, y, SCALE), _lse_rows(y, x, SCALE)
        diag = SCALE * np.sum(x * y, 1)
        loss = 0.5 * (np.mean(r - diag) + np.mean(c - diag))
        lg = SCALE * x[rows] @ y.T
        w = np.exp(lg - r[rows, None]) + np.exp(lg - c[None, :])
        w[np.arange(len(rows)), rows] -= 2.0
        return loss, SCALE / (2 * n) * w @ y
    if name == "siglip":
        total = 0.0
        for s in range(0, n, 4096):
            lg = SCALE * x[s:s + 4096] @ y.T + BIAS
            total += np.sum(np.logaddexp(0.0, lg))
        diag = SCALE * np.sum(x * y, 1) + BIAS
        loss = (total - diag.sum()) / n
        lg = SCALE * x[rows] @ y.T + BIAS
        sig = 1.0 / (1.0 + np.exp(-lg))
        return loss, SCALE / n * (sig @ y - y[rows])
    # NT-Xent over the 2n unit embeddings z = [x; y]; positives are i <-> i ± n.
    z = np.concatenate([x, y])
    inv = 1.0 / TEMP
    lse = _lse_rows(z, z, inv, mask_diag=True)
    pos = inv * np.sum(x * y, 1)
    loss = (lse.sum() - 2 * pos.sum()) / (2 * n)
    lg = inv * z[rows] @ z.T
    lg[np.arange(len(rows)), rows] = -np.inf
    w = np.exp(lg - lse[rows, None]) + np.exp(lg - lse[None, :])
    w[np.arange(len(rows)), rows + n] -= 2.0
    g = inv / (2 * n) * w @ z
    a = z[rows]  # inputs are unit vectors: project out the normalisation direction
    return loss, g - np.sum(g * a, 1, keepdims=True) * a


def exactness(name, n, mesh, block):
    x, y = _inputs(n, seed=1)
    f, extra = _fn(name, mesh, "ring", block)
    value, grads = f(*_placed(mesh, [x, y], extra))
    rows = np.random.default_rng(2).choice(n, 256, replace=False)
    ref_loss, ref_rows = reference(name, x, y, rows)
    got_rows = np.asarray(grads[0])[rows].astype(np.float64)
    return {
        "loss_rel_err": abs(float(value) - ref_loss) / abs(ref_loss),
        "grad_rows_rel_err": float(np.linalg.norm(got_rows - ref_rows) / np.linalg.norm(ref_rows)),
    }


def hardware() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "devices": jax.device_count(),
            "platform": jax.devices()[0].platform, "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--out", default=str(Path(__file__).with_name("ring_loss.json")))
    args = ap.parse_args()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    small, big, timed = (2048, 8192, 1024) if args.quick else (16384, 65536, 8192)
    result = {"hardware": hardware(), "d": D, "block": args.block, "losses": {}}
    for name in ["clip", "siglip", "nt_xent"]:
        r = {}
        r["ring_small"] = memory(name, small, "ring", mesh, args.block)
        r["ring_big"] = memory(name, big, "ring", mesh, args.block)
        r["gather_big"] = memory(name, big, "gather", mesh, args.block)
        r["temp_ratio"] = r["ring_big"]["temp_mib"] / r["ring_small"]["temp_mib"]
        t_ring, (v_ring, _) = wall_time(name, timed, "ring", mesh, args.block, 5)
        t_gather, (v_gather, _) = wall_time(name, timed, "gather", mesh, args.block, 5)
        r["time"] = {"n": timed, "ring_s": t_ring, "gather_s": t_gather,
                     "ratio": t_ring / t_gather,
                     "value_rel_diff": abs(float(v_ring) - float(v_gather)) / abs(float(v_gather))}
        r["exact"] = exactness(name, big, mesh, args.block)
        r["exact"]["n"] = big
        result["losses"][name] = r
        print(name, json.dumps(r, indent=1), flush=True)
    result["sizes"] = {"small": small, "big": big}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
