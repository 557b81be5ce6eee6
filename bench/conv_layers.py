"""Benchmark: XLA:CPU time of each convolution of the tiny CIFAR-stem ResNet, batch 512.

    .venv/bin/python bench/conv_layers.py

Per layer (side, C_in → C_out, kernel, stride; 512 NHWC images): the forward, the input
gradient and the kernel gradient as XLA differentiates ``lax.conv_general_dilated``, the
input gradient of strided layers as ``jssl.models.conv.phase_input_grad`` computes it
(where ``use_phase_dx`` applies; checked against XLA's), and the kernel gradient as
``jssl.models.conv.chunked_kernel_grad`` computes it (a scan over chunks of 8 images of
im2col matmuls) and as one whole-batch im2col matmul. Median of
``--repeats`` jitted calls; ``os.getloadavg()`` at the start and end. Writes
``bench/conv_layers.json`` (``python bench/render.py`` makes the table in
docs/performance.md). The chunked result is checked against XLA's before timing.

With PyTorch available (``bench/.venv-torch``, as for ``bench/compare.py``), the same layer in
``torch.nn.functional.conv2d`` (NCHW, float32) is timed alongside: the forward, and the
backward of both gradients in one ``torch.autograd.grad`` call, with each of
``--torch_threads`` intra-op thread counts; the faster count is compared with XLA's
forward + input gradient + kernel gradient.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jssl.models.conv import (  # noqa: E402
    _patches,
    chunked_kernel_grad,
    phase_input_grad,
    use_phase_dx,
)

# The tiny ResNet's layers, then tiny_wide's last stage (the quickstart's encoder).
LAYERS = [(28, 1, 8, 3, 1), (28, 8, 8, 3, 1), (28, 8, 16, 3, 2), (28, 8, 16, 1, 2),
          (14, 16, 16, 3, 1), (14, 16, 32, 3, 2), (7, 32, 32, 3, 1), (7, 32, 64, 3, 2),
          (4, 64, 64, 3, 1), (7, 32, 256, 3, 2), (7, 32, 256, 1, 2), (4, 256, 256, 3, 1)]


def _torch_times(torch, side, cin, cout, k, s, batch, repeats, threads) -> dict:
    """Median ms of PyTorch's forward and of its backward (input + kernel gradient)."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, side, side, generator=gen, requires_grad=True)
    w = torch.randn(cout, cin, k, k, generator=gen, requires_grad=True)

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w, stride=s, padding=(k - 1) // 2)

    dy = torch.randn(fwd().shape, generator=gen)

    def bwd():
        y = torch.nn.functional.conv2d(x, w, stride=s, padding=(k - 1) // 2)
        return torch.autograd.grad(y, (x, w), dy)

    from bench.compare import _median as median_s

    out = {}
    for name, fn in (("fwd", fwd), ("bwd", bwd)):
        fn()
        out[f"torch_{name}_ms"] = round(median_s(fn, repeats) * 1e3, 2)
    return out


def _median(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_layer(side, cin, cout, k, s, batch, repeats) -> dict:
    p = (k - 1) // 2
    pads = ((p, p), (p, p))

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (s, s), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    key_x, key_w, key_dy = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key_x, (batch, side, side, cin))
    w = jax.random.normal(key_w, (k, k, cin, cout))
    dy = jax.random.normal(key_dy, conv(x, w).shape)
    fns = {
        "fwd": (jax.jit(conv), (x, w)),
        "dx": (jax.jit(lambda w, dy: jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0]), (w, dy)),
        "dw_xla": (jax.jit(lambda x, dy: jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0]),
                   (x, dy)),
        "dw_chunked": (jax.jit(lambda x, dy: chunked_kernel_grad(x, dy, (k, k), (s, s), pads)),
                       (x, dy)),
        "dw_im2col": (jax.jit(lambda x, dy: (_patches(x, (k, k), (s, s), pads, dy.shape[1:3]).T
                                             @ dy.reshape(-1, cout)).reshape(k, k, cin, cout)),
                      (x, dy)),
    }
    if use_phase_dx((side, side), (s, s), pads):
        fns["dx_phase"] = (jax.jit(lambda w, dy: phase_input_grad(dy, w, (s, s), pads,
                                                                  (side, side))), (w, dy))
        ref_dx = np.asarray(fns["dx"][0](w, dy))
        np.testing.assert_allclose(fns["dx_phase"][0](w, dy), ref_dx, rtol=1e-4,
                                   atol=1e-5 * np.abs(ref_dx).max())
    ref = np.asarray(fns["dw_xla"][0](x, dy))
    np.testing.assert_allclose(fns["dw_chunked"][0](x, dy), ref, rtol=1e-3,
                               atol=1e-4 * np.abs(ref).max())
    out = {"side": side, "cin": cin, "cout": cout, "kernel": k, "stride": s}
    for name, (fn, args) in fns.items():
        out[f"{name}_ms"] = round(_median(fn, *args, repeats=repeats) * 1e3, 2)
    out["xla_total_ms"] = round(out["fwd_ms"] + out["dx_ms"] + out["dw_xla_ms"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--torch_threads", default="1,2",
                        help="PyTorch intra-op thread counts to time ('' to skip PyTorch)")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    threads = [int(t) for t in args.torch_threads.split(",") if t]
    torch = None
    if threads:
        from bench.compare import import_torch

        try:
            torch = import_torch()
        except ImportError:
            print("PyTorch not found (make bench installs it): XLA columns only")
    load_start = os.getloadavg()[0]
    results = []
    for layer in LAYERS:
        r = bench_layer(*layer, args.batch, args.repeats)
        if torch is not None:
            per = {t: _torch_times(torch, *layer, args.batch, args.repeats, t) for t in threads}
            best = min(per, key=lambda t: per[t]["torch_fwd_ms"] + per[t]["torch_bwd_ms"])
            r.update(per[best], torch_threads=best,
                     torch_total_ms=round(per[best]["torch_fwd_ms"] + per[best]["torch_bwd_ms"],
                                          2))
            r["xla_over_torch"] = round(r["xla_total_ms"] / r["torch_total_ms"], 2)
        print(r, flush=True)
        results.append(r)
    report = {"command": f"python bench/conv_layers.py --batch {args.batch} --repeats "
                         f"{args.repeats} --torch_threads {args.torch_threads}",
              "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "jax": jax.__version__, "nproc": os.cpu_count(), "batch": args.batch,
              "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "malloc": os.environ.get("LD_PRELOAD") or "glibc",
              "torch": torch.__version__ if torch is not None else None,
              "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # as jssl's command line (tcmalloc on CPU); PyTorch runs under it too
    main()
