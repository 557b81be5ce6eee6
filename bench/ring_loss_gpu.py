"""Ring contrastive losses at a million examples on one GPU: memory, time and exactness.

    python bench/ring_loss_gpu.py                 # N = 1,048,576 on one GPU
    python bench/ring_loss_gpu.py --n 262144      # a smaller N

The claim under test (docs/scale.md): the ring losses never hold an N × N logits matrix, so
CLIP's loss and gradient at N = 1,048,576 (d = 128, float32) fit in ≤ 4 GiB of one GPU, where
the gathered logits alone would take 4 TiB. For CLIP, SigLIP and NT-Xent (``impl="ring"``,
tile ``--block``, one device) it records:

* ``memory_analysis()`` of the compiled loss + gradient (arguments, outputs, temporaries);
* the device's ``peak_bytes_in_use`` around one run (the allocator's own count);
* the median wall time of ``--repeats`` runs after a warm-up;
* for CLIP and SigLIP: the loss and 256 gradient rows against a float64 reference computed
  here block by block with plain ``jnp`` (no ring code), as in ``bench/ring_loss.py``.

Writes ``bench/ring_loss_gpu.json``; ``python bench/render.py`` renders it into
docs/performance.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cuda,cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ring_loss import BIAS, SCALE, _fn, _inputs, _placed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


def _lse_rows64(a, b, scale, block):
    """float64 ``logsumexp_j(scale · a_i·b_j)`` for every row i, ``block`` rows at a time."""
    a = a.reshape(-1, block, a.shape[1])

    def one(blk):
        return jax.nn.logsumexp(scale * blk @ b.T, axis=1)

    return jax.lax.map(one, a).reshape(-1)


def _softplus_sum64(a, b, block):
    a = a.reshape(-1, block, a.shape[1])

    def one(blk):
        return jnp.sum(jnp.logaddexp(0.0, SCALE * blk @ b.T + BIAS))

    return jnp.sum(jax.lax.map(one, a))


def reference64(name, x, y, rows, block=256):
    """float64 loss and gradient rows (w.r.t. the first input) of CLIP or SigLIP."""
    x = jnp.asarray(x, jnp.float64)
    y = jnp.asarray(y, jnp.float64)
    n = x.shape[0]
    diag = jnp.sum(x * y, 1)
    if name == "clip":
        r = jax.jit(_lse_rows64, static_argnums=(2, 3))(x, y, SCALE, block)
        c = jax.jit(_lse_rows64, static_argnums=(2, 3))(y, x, SCALE, block)
        loss = 0.5 * (jnp.mean(r - SCALE * diag) + jnp.mean(c - SCALE * diag))
        lg = SCALE * x[rows] @ y.T
        w = jnp.exp(lg - r[rows, None]) + jnp.exp(lg - c[None, :])
        w = w.at[jnp.arange(len(rows)), rows].add(-2.0)
        return float(loss), np.asarray(SCALE / (2 * n) * w @ y)
    total = jax.jit(_softplus_sum64, static_argnums=2)(x, y, block)
    loss = (total - jnp.sum(SCALE * diag + BIAS)) / n
    sig = jax.nn.sigmoid(SCALE * x[rows] @ y.T + BIAS)
    return float(loss), np.asarray(SCALE / n * (sig @ y - y[rows]))


def measure(name, n, block, repeats, mesh, check):
    f, extra = _fn(name, mesh, "ring", block)
    x, y = _inputs(n, seed=1)
    args = _placed(mesh, [x, y], extra)
    compiled = f.lower(*args).compile()
    m = compiled.memory_analysis()
    dev = jax.devices()[0]
    jax.block_until_ready(compiled(*args))
    stats0 = dev.memory_stats() or {}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value, grads = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    stats = dev.memory_stats() or {}
    out = {"n": n, "block": block,
           "temp_gib": m.temp_size_in_bytes / GiB, "argument_gib": m.argument_size_in_bytes / GiB,
           "output_gib": m.output_size_in_bytes / GiB,
           "total_gib": (m.temp_size_in_bytes + m.argument_size_in_bytes
                         + m.output_size_in_bytes) / GiB,
           "peak_in_use_gib": stats.get("peak_bytes_in_use", float("nan")) / GiB,
           "in_use_before_gib": stats0.get("bytes_in_use", float("nan")) / GiB,
           "gathered_logits_gib": (2 * n if name == "nt_xent" else n) ** 2 * 4 / GiB,
           "time_s": statistics.median(times), "loss": float(value)}
    if check:
        rows = np.random.default_rng(2).choice(n, 256, replace=False)
        got = np.asarray(grads[0])[rows].astype(np.float64)
        del grads, args
        jax.config.update("jax_enable_x64", True)  # for the reference only
        try:
            ref_loss, ref_rows = reference64(name, x, y, rows)
        finally:
            jax.config.update("jax_enable_x64", False)
        out["loss_rel_err"] = abs(out["loss"] - ref_loss) / abs(ref_loss)
        out["grad_rows_rel_err"] = float(np.linalg.norm(got - ref_rows)
                                         / np.linalg.norm(ref_rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_048_576)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--losses", default="clip,siglip,nt_xent")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    report = {"command": "python bench/ring_loss_gpu.py " + " ".join(sys.argv[1:]),
              "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device": jax.devices()[0].device_kind, "jax": jax.__version__, "d": 128,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "losses": {}}
    for name in args.losses.split(","):
        r = measure(name, args.n, args.block, args.repeats, mesh,
                    check=name in ("clip", "siglip"))
        report["losses"][name] = r
        print(name, json.dumps(r), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
