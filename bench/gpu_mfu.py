"""Benchmark: MAE and CLIP ViT-B/16 train steps in bfloat16 on one GPU — images/s and MFU.

    python bench/gpu_mfu.py                      # on a machine with one GPU
    python bench/gpu_mfu.py --only mae --batch 256,512 --attention xla,cudnn
    python bench/gpu_mfu.py --cases mae:1024:cudnn,clip:512:cudnn   # these cases, in order
    python bench/gpu_mfu.py --cases mae:1024:cudnn,mae:1024:cudnn:PAD_SEQUENCE_ONCE=True
                             # a case's own A/B switches (jssl.models.vit's unless dotted)

Each case is the real-scale preset's method and optimizer (``experiments/mae.py:imagenet_vitb16``,
``experiments/clip.py:coco_b16``: ViT-B/16 at 224 px, bf16 compute, float32 params and AdamW
state) with the global batch set by ``--batch``, on a synthetic batch of random uint8 images
(and random caption ids for CLIP), so no dataset is needed. Timed: the ``update`` program
(forward, backward, AdamW) on prepared views/masks, median of ``--repeats`` steps after warm-up,
each ``block_until_ready``; the on-device ``prepare`` (crops, flips, masks) is timed apart.

MFU = model FLOPs per step / step time / peak. Model FLOPs are counted analytically
(:func:`vit_flops`: 2 FLOPs per multiply-add of every matmul — patch embedding, q/k/v/out
projections, attention scores and mixing, MLP, heads — and training = 3 × forward), as in
PaLM's MFU; ``compiled.cost_analysis()["flops"]`` of the update program is reported beside it.
Peak: 989 TFLOP/s, dense bf16 on an H100 SXM (``--peak_tflops`` for other chips).

Writes ``bench/gpu_mfu.json``; ``python bench/render.py`` turns it into the table in
``docs/performance.md``.
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

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from steps import load_config  # noqa: E402

from jssl.methods import get_method  # noqa: E402
from jssl.train.mesh import make_mesh  # noqa: E402
from jssl.train.optim import make_optimizer  # noqa: E402
from jssl.train.state import batch_spec, create_state, make_train_step  # noqa: E402

SPECS = {"mae": "mae:imagenet_vitb16", "clip": "clip:coco_b16"}


def _layer_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one pre-norm transformer block over ``tokens`` tokens (per example)."""
    proj = 2 * tokens * dim * dim * 4  # q, k, v, out
    attn = 2 * 2 * tokens * tokens * dim  # q·kᵀ and probs·v
    mlp = 2 * 2 * tokens * dim * int(dim * mlp_ratio)
    return proj + attn + mlp


def vit_flops(method: str, config) -> float:
    """Training FLOPs per example (3 × forward: backward costs two forwards)."""
    e = config.model.encoder
    from jssl.models.vit import PRESETS
    arch = PRESETS[e.preset]
    p, dim, depth = arch["patch_size"], arch["dim"], arch["depth"]
    size = config.augment.size
    patches = (size // p) ** 2
    embed = 2 * patches * (p * p * 3) * dim
    if method == "mae":
        keep = int(patches * (1 - float(config.method_params.mask_ratio)))
        dec = config.model.decoder
        fwd = embed + depth * _layer_flops(keep + 1, dim)
        fwd += 2 * (keep + 1) * dim * dec.dim  # decoder_embed
        fwd += dec.depth * _layer_flops(patches + 1, dec.dim)
        fwd += 2 * (patches + 1) * dec.dim * (p * p * 3)  # pixel head
    else:
        t = config.model.text
        length = config.captions.max_len
        fwd = embed + depth * _layer_flops(patches + 1, dim)
        fwd += 2 * dim * config.model.embed_dim
        fwd += t.depth * _layer_flops(length, t.dim, t.mlp_ratio)
        fwd += 2 * t.dim * config.model.embed_dim
    return 3.0 * fwd


def synthetic_batch(method: str, config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = config.augment.size
    out = {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
           "label": rng.integers(0, 1000, (batch,), dtype=np.int32)}
    if method == "clip":
        length = config.captions.max_len
        vocab = config.model.text.vocab_size
        tokens = rng.integers(4, vocab, (batch, length), dtype=np.int32)
        ends = rng.integers(8, length, (batch,))  # caption lengths; [EOS] then [PAD]s
        tokens[:, 0] = 1
        tokens[np.arange(batch), ends] = 2
        tokens[np.arange(length)[None, :] > ends[:, None]] = 0
        out["tokens"] = tokens
    return out


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else None


def build_case(method: str, batch: int, attention: str, devices=None):
    """The preset's config, initial state, train step and a synthetic global batch, at
    ``batch`` with ``attention``, on ``devices`` (default: all)."""
    from jssl.data.pipeline import to_global_batch

    config = load_config(SPECS[method])
    config.train.batch_size = batch
    config.model.encoder.attention = attention
    mesh = make_mesh(config, devices=devices)
    m = get_method(config.method)(config, mesh)
    tx, _, _ = make_optimizer(config.optim, global_batch=batch, total_steps=int(config.train.steps))
    host = synthetic_batch(method, config, batch)
    data = to_global_batch(host, mesh, batch_spec(mesh))
    state, shardings = create_state(m, tx, jax.random.key(0), host, mesh)
    return config, state, make_train_step(m, tx, mesh, shardings), data


def bench_case(method: str, batch: int, attention: str, repeats: int, peak: float,
               case_sets: str = "") -> dict:
    sets = apply_sets(case_sets)
    config, state, step, data = build_case(method, batch, attention)
    t0 = time.perf_counter()
    prepare = step.prepare.lower(state.rng, state.step, data).compile()
    inputs = prepare(state.rng, state.step, data)
    update = step.update.lower(state, inputs).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one_update():
        holder["state"], metrics = update(holder["state"], inputs)
        return metrics

    first = float(jax.device_get(one_update()["loss"]))
    _median(one_update, 3)
    update_s = _median(one_update, repeats)
    prepare_s = _median(lambda: prepare(holder["state"].rng, holder["state"].step, data),
                        repeats)
    model_flops = vit_flops(method, config) * batch
    xla_flops = _flops_of(update)
    loss = float(jax.device_get(one_update()["loss"]))
    return {"method": method, "preset": SPECS[method], "batch": batch, "attention": attention,
            "dtype": str(config.model.encoder.dtype), "compile_s": round(compile_s, 1),
            "update_s": update_s, "prepare_s": prepare_s,
            "images_per_s": batch / update_s,
            "images_per_s_with_prepare": batch / (update_s + prepare_s),
            "model_tflop_per_step": model_flops / 1e12,
            "xla_tflop_per_step": None if xla_flops is None else xla_flops / 1e12,
            "mfu": model_flops / update_s / peak,
            "mfu_with_prepare": model_flops / (update_s + prepare_s) / peak,
            "loss_first": first, "loss_last": loss, "repeats": repeats,
            "sets": {k: repr(v) for k, v in sets.items()}}


def attention_agreement(batch: int = 8) -> dict:
    """cuDNN's fused attention against Flax's einsum attention: same params, same images."""
    from jssl.models.vit import vit
    x = jax.random.uniform(jax.random.key(1), (batch, 224, 224, 3))
    ref = vit("b16", dtype=jnp.bfloat16, attention="xla")
    fused = vit("b16", dtype=jnp.bfloat16, attention="cudnn")
    variables = ref.init(jax.random.key(0), x)
    a = np.asarray(ref.apply(variables, x), np.float64)
    b = np.asarray(fused.apply(variables, x), np.float64)
    ref32 = np.asarray(vit("b16", dtype=jnp.float32).apply(variables, x), np.float64)
    rel = lambda u, v: float(np.linalg.norm(u - v) / np.linalg.norm(v))  # noqa: E731
    return {"cudnn_vs_xla_bf16": rel(b, a), "xla_bf16_vs_f32": rel(a, ref32),
            "cudnn_bf16_vs_f32": rel(b, ref32)}


def apply_sets(spec: str) -> dict[str, object]:
    """``--set module.NAME=value,...``: set module-level A/B switches before building
    (e.g. ``jssl.models.vit.PATCH_EMBED_MATMUL=True``); values are Python literals."""
    import ast
    import importlib
    done: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        target, _, text = item.partition("=")
        module, _, name = target.rpartition(".")
        try:
            mod, value = importlib.import_module(module), ast.literal_eval(text)
        except (ImportError, ValueError, SyntaxError) as e:
            raise SystemExit(f"--set {item!r}: {e}; expected module.NAME=literal, e.g. "
                             f"jssl.models.vit.CUDNN_SEQ_MULTIPLE=8") from e
        if not hasattr(mod, name):
            raise SystemExit(f"--set {item!r}: {module} has no {name}")
        setattr(mod, name, value)
        done[target] = value
    return done


def parse_cases(args: argparse.Namespace) -> list[tuple[str, int, str, str]]:
    """``--cases`` in order, else every ``--only`` × ``--batch`` × ``--attention``; each case
    as ``(method, batch, attention, sets)``, ``sets`` an ``--set`` string for that case alone
    (a case's optional 4th field, ``NAME=literal+NAME=literal``, names in jssl.models.vit
    unless dotted)."""
    if not args.cases:
        return [(m, int(b), a, "") for m in args.only.split(",")
                for b in args.batch.split(",") for a in args.attention.split(",")]
    cases = []
    for case in args.cases.split(","):
        parts = case.split(":", 3)
        if len(parts) < 3 or parts[0] not in SPECS or not parts[1].isdigit() \
                or parts[2] not in ("xla", "cudnn"):
            raise SystemExit(f"--cases={args.cases!r}: {case!r} is not method:batch:attention"
                             f"[:NAME=value+...] (method in {sorted(SPECS)}, attention xla or "
                             f"cudnn), e.g. mae:1024:cudnn or "
                             f"mae:1024:cudnn:PAD_SEQUENCE_ONCE=True")
        sets = ",".join(item if "." in item.partition("=")[0] else f"jssl.models.vit.{item}"
                        for item in parts[3].split("+")) if len(parts) == 4 else ""
        cases.append((parts[0], int(parts[1]), parts[2], sets))
    return cases


def _current(sets: str) -> str:
    """The ``--set`` string that puts back what ``sets`` will change."""
    import importlib
    out = []
    for item in filter(None, sets.split(",")):
        module, _, name = item.partition("=")[0].rpartition(".")
        out.append(f"{module}.{name}={getattr(importlib.import_module(module), name)!r}")
    return ",".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="mae,clip")
    ap.add_argument("--batch", default="256")
    ap.add_argument("--attention", default="xla,cudnn")
    ap.add_argument("--cases", default="",
                    help="method:batch:attention,... run in this order (replaces --only, "
                         "--batch and --attention)")
    ap.add_argument("--skip_agreement", action="store_true",
                    help="skip the cuDNN-vs-XLA attention agreement check")
    ap.add_argument("--set", default="",
                    help="module.NAME=literal,...: A/B switches set before building")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--peak_tflops", type=float, default=989.0)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    if jax.default_backend() != "gpu":
        sys.exit(f"bench/gpu_mfu.py needs a GPU; jax.default_backend() is "
                 f"{jax.default_backend()!r}")
    dev = jax.devices()[0]
    report = {"command": "python bench/gpu_mfu.py " + " ".join(sys.argv[1:]),
              "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "device": dev.device_kind, "devices": jax.device_count(), "jax": jax.__version__,
              "peak_tflops": args.peak_tflops,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "sets": apply_sets(args.set),
              "results": [], "errors": []}
    if not args.skip_agreement:
        try:
            report["attention_agreement"] = attention_agreement()
            print("attention agreement", report["attention_agreement"], flush=True)
        except Exception as e:  # noqa: BLE001 - a failing kernel is a result too
            report["errors"].append(f"attention agreement: {type(e).__name__}: {e}"[:500])
    for method, batch, attention, sets in parse_cases(args):
        before = _current(sets)
        try:
            r = bench_case(method, batch, attention, args.repeats, args.peak_tflops * 1e12,
                           case_sets=sets)
        except Exception as e:  # noqa: BLE001
            msg = f"{method} batch {batch} {attention} {sets}: {type(e).__name__}: {e}"
            print(msg[:800], flush=True)
            report["errors"].append(msg[:800])
            continue
        finally:
            apply_sets(before)
        report["results"].append(r)
        print(f"{method:5s} batch {batch:4d} {attention:6s} {sets}: {r['images_per_s']:8.0f} "
              f"img/s, update {r['update_s'] * 1e3:7.1f} ms, prepare "
              f"{r['prepare_s'] * 1e3:6.1f} ms, MFU {100 * r['mfu']:5.1f} % "
              f"(xla flops {r['xla_tflop_per_step']} vs model "
              f"{r['model_tflop_per_step']:.2f} TFLOP), compile {r['compile_s']} s",
              flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
