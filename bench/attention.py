"""Benchmark: one attention's forward + backward, jssl's native CPU kernel and XLA:CPU's
(head-major) attention against PyTorch's fused ``scaled_dot_product_attention``, at the CPU
presets' shapes.

    .venv/bin/python bench/attention.py
    .venv/bin/python bench/attention.py --repeats 15

For q, k, v and the output gradient dO of shape [B, L, H, D] (the MAE encoder's 13 tokens
and decoder's 50 tokens of the ``mae:fashion_mnist`` update, BERT's 64 tokens of
``bert:fortunes``): JAX runs ``jax.grad`` of ⟨attention(q, k, v), dO⟩ with respect to q, k
and v, jitted, with ``jssl.models.vit.attention_fn("xla")`` (softmax(q·kᵀ/√D)·v) twice: with
``jssl.models.native_attention.ENABLED`` True (column ``native``: the fused kernel jssl's ViT
and MAE use on a one-device CPU) and False (column ``jax``: XLA's attention, head-major,
``jssl.models.head_major``; BERT's own attention forms the same products the same way);
PyTorch runs the same function with
``torch.nn.functional.scaled_dot_product_attention`` on [B, H, L, D] views (as
``nn.MultiheadAttention`` does) and ``backward()``, ``torch.set_num_threads(os.cpu_count())``.
The last row masks out each sequence's keys past a random valid length (a key padding mask,
as BERT's padded batches; ``attn_mask`` for PyTorch). Both in one process, in blocks of
``--block`` back-to-back calls (a block's first two dropped),
the three's blocks alternating ``--repeats`` times; medians; the gradients are checked
equal first. Also the forward alone. Ratios are to PyTorch (> 1: PyTorch is faster).
``JSSL_NATIVE_MARCH=x86-64-v3`` times the kernel built for AVX2 (recorded in the JSON).
Writes ``bench/attention.json`` (rendered by ``python bench/render.py`` into
docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.kernel_ab import parse, pooled_medians, torch_all_cores  # noqa: E402
from bench.kernel_ab import row as result_row  # noqa: E402

#: (name, B, L, H, D) of the CPU presets' attentions
SHAPES = (("mae:fashion_mnist encoder", 256, 13, 4, 32),
          ("mae:fashion_mnist decoder", 256, 50, 4, 16),
          ("bert:fortunes (its shape)", 64, 64, 4, 32),
          ("bert:fortunes, key padding mask", 64, 64, 4, 32))


def _measure(name: str, arrays: list, torch, repeats: int, block: int,
             valid=None) -> list[dict]:
    """Rows (forward + backward, forward) for q, k, v, dO = ``arrays`` ([B, L, H, D]); with
    ``valid`` (bool [B, L]) keys past each row's valid length are masked out."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jssl.models import native_attention
    from jssl.models.vit import attention_fn

    jq, jk, jv, jdo = (jnp.asarray(a) for a in arrays)
    mask = None if valid is None else jnp.asarray(valid)[:, None, None, :]
    grads, fwds = {}, {}
    for label, on in (("jax", False), ("native", True)):
        native_attention.ENABLED = on
        attend = attention_fn("xla")
        grads[label] = jax.jit(jax.grad(
            lambda q, k, v, f=attend: jnp.vdot(f(q, k, v, mask=mask), jdo), (0, 1, 2)))
        fwds[label] = jax.jit(lambda q, k, v, f=attend: f(q, k, v, mask=mask))
        jax.block_until_ready((grads[label](jq, jk, jv), fwds[label](jq, jk, jv)))
    native_attention.ENABLED = None
    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in arrays[:3])
    tdo = torch.from_numpy(arrays[3])
    t_mask = None if valid is None else torch.from_numpy(valid)[:, None, None, :]

    def t_attend(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=t_mask).transpose(1, 2)

    def t_grad():
        for a in (tq, tk, tv):
            a.grad = None
        (t_attend(tq, tk, tv) * tdo).sum().backward()
        return tq.grad, tk.grad, tv.grad

    def t_fwd():
        with torch.no_grad():
            return t_attend(tq, tk, tv)

    want = [w.numpy() for w in t_grad()]
    for label, grad in grads.items():
        for got, w in zip(grad(jq, jk, jv), want, strict=True):
            np.testing.assert_allclose(np.asarray(got), w, atol=1e-4 * np.abs(w).max(),
                                       err_msg=label)
    rows = []
    for part, runs in (("forward + backward", {
            **{k: (lambda g=g: jax.block_until_ready(g(jq, jk, jv))) for k, g in grads.items()},
            "torch": t_grad}),
            ("forward", {
                **{k: (lambda f=f: jax.block_until_ready(f(jq, jk, jv)))
                   for k, f in fwds.items()},
                "torch": t_fwd})):
        med = pooled_medians(runs, repeats, block)
        row = result_row(med, attention=name, shape=list(arrays[0].shape), part=part)
        row["ratio_native_torch"] = round(med["native"] / med["torch"], 2)
        print(f"{name:32s} {part:18s} native {med['native'] * 1e3:.2f} ms, jax "
              f"{med['jax'] * 1e3:.2f} ms, torch {med['torch'] * 1e3:.2f} ms: "
              f"{row['ratio_native_torch']:.2f} / {row['ratio_jax_torch']:.2f}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    args = parse(__doc__, __file__)
    torch = torch_all_cores()
    import numpy as np

    from bench.baselines import write_report

    rng = np.random.default_rng(0)
    rows = []
    for name, *shape in SHAPES:
        arrays = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
        b, length = shape[:2]
        valid = (np.arange(length)[None] < rng.integers(length // 4, length + 1, size=(b, 1))
                 if "mask" in name else None)  # each row's keys past its length are padding
        rows += _measure(name, arrays, torch, args.repeats, args.block, valid)
    from jssl import native

    write_report(args.out, "attention.py", args, torch=torch.__version__,
                 torch_threads=torch.get_num_threads(), native_march=native.march(),
                 xla_flags=os.environ.get("XLA_FLAGS", ""), results=rows)


if __name__ == "__main__":
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so does this comparison
    main()
