"""Benchmark: the issue's own model, a 6-conv GroupNorm CNN + MLP head, Flax vs PyTorch.

    .venv/bin/python bench/gn_convnet.py
    JSSL_CPU_MALLOC=0 .venv/bin/python bench/gn_convnet.py --out bench/gn_convnet_glibc.json
    JSSL_XLA_CPU_FLAGS=0 JSSL_CPU_MALLOC=0 .venv/bin/python bench/gn_convnet.py \
        --out bench/gn_convnet_flag_off.json

Issue #8 opened with this measurement: "6 conv layers 32-64-128 with GroupNorm + MLP head,
batch 512 of 28×28, AdamW step: PyTorch 2.13 CPU 0.71 s/step, JAX 0.10 / Flax 0.12 2.93
s/step". Model here (both frameworks, float32, NHWC in Flax / NCHW in PyTorch): 3×3 convs
with bias of widths 32, 32, 64, 64, 128, 128, the second of each pair with stride 2
(28 → 14 → 7 → 4), each followed by GroupNorm (8 groups) and ReLU; global average pool;
Dense 128 → 256, ReLU, Dense 256 → 10; softmax cross-entropy on labels; AdamW (lr 1e-3,
weight decay 1e-4 on every parameter, as ``torch.optim.AdamW``). Plain ``flax.linen``
layers and ``optax.adamw``, as a user would write it, and the same model with jssl's layers
(``--variants``): ``jssl_norm`` swaps ``nn.GroupNorm`` for ``jssl.models.norm.GroupNorm``,
``jssl`` also ``nn.Conv`` for ``jssl.models.conv.Conv`` (same params and init, so the
same model; the first-step losses are checked equal); jssl is imported first, so jssl's
XLA:CPU flag applies unless ``JSSL_XLA_CPU_FLAGS=0``, and the script restarts itself with
tcmalloc preloaded as jssl's command line does (``jssl.cpu_malloc``; both frameworks run in
this one process, so both get it) unless ``JSSL_CPU_MALLOC=0``. One update of each Flax variant and
one PyTorch update alternate ``--repeats`` times after two warm-ups; PyTorch runs with each
of ``--torch_threads``; each ratio is that Flax variant's median / the faster PyTorch median. Writes
``bench/gn_convnet.json`` (``python bench/render.py`` makes the table in
docs/performance.md).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jssl  # noqa: E402,F401  (its XLA:CPU flag; no JAX computation has run yet)
from jssl.models.conv import Conv  # noqa: E402
from jssl.models.norm import GroupNorm  # noqa: E402

WIDTHS = (32, 32, 64, 64, 128, 128)


# the layers of each variant: (convolution, GroupNorm); same params, same init
VARIANTS = {"flax": (nn.Conv, nn.GroupNorm), "jssl_norm": (nn.Conv, GroupNorm),
            "jssl": (Conv, GroupNorm)}


class GNConvNet(nn.Module):
    variant: str = "flax"  # a key of VARIANTS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv, norm = VARIANTS[self.variant]
        for i, w in enumerate(WIDTHS):
            s = 2 if i % 2 else 1
            x = conv(w, (3, 3), (s, s), padding=((1, 1), (1, 1)), name=f"Conv_{i}")(x)
            x = nn.relu(norm(num_groups=8, epsilon=1e-5, name=f"GroupNorm_{i}")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


def jax_step(images: np.ndarray, labels: np.ndarray, variant: str = "flax"):
    model, tx = GNConvNet(variant), optax.adamw(1e-3, weight_decay=1e-4)
    params = model.init(jax.random.key(0), images[:1])
    holder = {"state": (params, tx.init(params))}
    x, y = jnp.asarray(images), jnp.asarray(labels)

    @jax.jit
    def update(state, x, y):
        params, opt = state

        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), loss

    def step():
        holder["state"], loss = update(holder["state"], x, y)
        return jax.block_until_ready(loss)

    step.num_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    return step


def torch_step(torch, images: np.ndarray, labels: np.ndarray):
    layers, cin = [], images.shape[-1]
    for i, w in enumerate(WIDTHS):
        layers += [torch.nn.Conv2d(cin, w, 3, 2 if i % 2 else 1, 1), torch.nn.GroupNorm(8, w),
                   torch.nn.ReLU()]
        cin = w
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(cin, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.tensor(images.transpose(0, 3, 1, 2).copy())
    y = torch.tensor(labels.astype(np.int64))

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step.num_params = sum(p.numel() for p in net.parameters())
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--torch_threads", default="1,2")
    parser.add_argument("--variants", default="flax,jssl_norm,jssl",
                        help="Flax models to time: flax (nn.Conv + nn.GroupNorm), jssl_norm "
                             "(nn.Conv + jssl GroupNorm), jssl (jssl Conv + GroupNorm)")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    variants = args.variants.split(",")
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--variants={args.variants!r}: use a comma-separated subset of "
                     f"{sorted(VARIANTS)}")
    from bench.baselines import hardware
    from bench.compare import _timed, import_torch

    torch = import_torch()
    rng = np.random.default_rng(0)
    images = rng.random((args.batch, 28, 28, 1), np.float32)
    labels = rng.integers(0, 10, args.batch)
    ours, compile_s, loss0 = {}, {}, {}
    for variant in variants:  # "jax" keeps the plain-Flax key of the earlier JSON files
        key = "jax" if variant == "flax" else f"jax_{variant}"
        ours[key] = jax_step(images, labels, variant)
        t0 = time.perf_counter()
        loss0[key] = float(ours[key]())
        compile_s[key] = round(time.perf_counter() - t0, 2)
    if any(abs(v - next(iter(loss0.values()))) > 1e-5 for v in loss0.values()):
        raise SystemExit(f"first-step losses differ between the variants: {loss0}")
    threads = [int(t) for t in args.torch_threads.split(",")]
    peer = torch_step(torch, images, labels)
    for key, step in ours.items():
        if peer.num_params != step.num_params:
            raise SystemExit(f"parameter counts differ: {key} {step.num_params}, torch "
                             f"{peer.num_params}; the two models are not the same")
    times: dict[str, list[float]] = {**{k: [] for k in ours},
                                     **{f"torch_{t}t": [] for t in threads}}
    loads = []
    for rep in range(args.repeats + 2):
        sample = {k: _timed(step) for k, step in ours.items()}
        for t in threads:
            torch.set_num_threads(t)
            sample[f"torch_{t}t"] = _timed(peer)
        if rep >= 2:
            for k, v in sample.items():
                times[k].append(v)
            loads.append(round(os.getloadavg()[0], 2))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min((k for k in med if k.startswith("torch")), key=med.get)
    report = {
        "command": f"python bench/gn_convnet.py --batch {args.batch} --repeats {args.repeats} "
                   f"--torch_threads {args.torch_threads} --variants {args.variants}",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(), "torch": torch.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "batch": args.batch,
        "malloc": os.environ.get("LD_PRELOAD") or "glibc",
        "params": peer.num_params, "compile_s": compile_s, "loss_step0": loss0,
        "load_avg_1m": loads,
        "median_s": {k: round(v, 4) for k, v in med.items()}, "best_torch": best,
        **{("ratio" if k == "jax" else f"ratio_{k[4:]}"): round(med[k] / med[best], 3)
           for k in ours},
    }
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so do both sides here
    main()
