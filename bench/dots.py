"""Benchmark: the float32 matmuls of the BERT CPU update, XLA:CPU (as jssl runs it) against
PyTorch, one matmul at a time.

    .venv/bin/python bench/dots.py
    .venv/bin/python bench/dots.py --repeats 61

A dense layer's update makes three matmuls: the forward y = x·W ([M, K]·[K, N]), the input
gradient dx = dy·Wᵀ and the kernel gradient dW = xᵀ·dy, which contracts over the M rows of
both operands. For the four dense shapes of the ``bert:fortunes`` update (64 rows of 64
tokens, width 128: the fused q/k/v projection, the MLP's two layers, and the tied MLM
logits over 64 × 20 predictions and the 4000-token vocabulary), each matmul is jitted in
JAX and run in PyTorch (``torch.set_num_threads(os.cpu_count())``) in one process, in
blocks of ``--block`` back-to-back calls, the two frameworks' blocks alternating ``--repeats``
times; each block's first two calls are dropped, the rest pooled; medians. Blocks, not single
calls: right after a PyTorch matmul its OpenMP threads still spin on the two cores, and a
JAX matmul run then took 3.5-3.9 ms against 2.2 ms back to back (and PyTorch's after a pause
6.6 against 1.7 ms; exploratory, 2026-12-03), which would measure the thread pools' hand-over
rather than the kernels. Ratios are JAX / PyTorch (> 1: PyTorch is
faster). jssl's XLA flags are those of its CLI (``jssl.xla_cpu``). Writes
``bench/dots.json`` (rendered by ``python bench/render.py`` into docs/performance.md).
Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.kernel_ab import parse, pooled_medians, torch_all_cores  # noqa: E402
from bench.kernel_ab import row as result_row  # noqa: E402

#: (name, M, K, N) of the bert:fortunes update's dense layers
SHAPES = (("q/k/v projection", 4096, 128, 384), ("MLP in", 4096, 128, 512),
          ("MLP out", 4096, 512, 128), ("MLM logits", 1280, 128, 4000))


def main() -> None:
    args = parse(__doc__, __file__)
    torch = torch_all_cores()
    import jax
    import numpy as np

    from bench.baselines import write_report

    rng = np.random.default_rng(0)
    rows = []
    for name, m, k, n in SHAPES:
        x, w, dy = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (k, n), (m, n)))
        jx, jw, jdy = (jax.device_put(a) for a in (x, w, dy))
        tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))
        forms = {"forward x·W": (lambda a, b: a @ b, "xw"),
                 "input gradient dy·Wᵀ": (lambda a, b: a @ b.T, "dw"),
                 "kernel gradient xᵀ·dy": (lambda a, b: a.T @ b, "xd")}
        arrays = {"x": (jx, tx), "w": (jw, tw), "d": (jdy, tdy)}
        for part, (fn, names) in forms.items():
            jargs = [arrays[c][0] for c in names]
            targs = [arrays[c][1] for c in names]
            jfn = jax.jit(fn)
            got, want = np.asarray(jfn(*jargs)), fn(*targs).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
            med = pooled_medians({"jax": lambda f=jfn, a=jargs: jax.block_until_ready(f(*a)),
                                  "torch": lambda f=fn, a=targs: f(*a)}, args.repeats,
                                 args.block)
            row = result_row(med, layer=name, m=m, k=k, n=n, matmul=part)
            print(f"{name:17s} {part:24s} jax {med['jax'] * 1e3:.2f} ms, torch "
                  f"{med['torch'] * 1e3:.2f} ms: {row['ratio_jax_torch']:.2f}", flush=True)
            rows.append(row)
    write_report(args.out, "dots.py", args, torch=torch.__version__,
                 torch_threads=torch.get_num_threads(),
                 xla_flags=os.environ.get("XLA_FLAGS", ""), results=rows)


if __name__ == "__main__":
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so do the matmuls here
    main()
