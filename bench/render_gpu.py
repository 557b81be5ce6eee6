"""The GPU tables of docs/performance.md, rendered from their JSON by ``bench/render.py``:
``gpu_mfu`` (and ``gpu_mfu_h100``), ``gpu_mfu_ab``, ``gpu_profile_mae``, ``steps_gpu``."""
from __future__ import annotations


def gpu_mfu(r: dict) -> str:
    """bench/gpu_mfu.py: ViT-B/16 train steps in bfloat16 on one GPU, images/s and MFU."""
    rows = [
        f"Measured by `{r['command']}` on {r['devices']}× {r['device']}, jax {r['jax']}, "
        f"{r['date_utc'][:16].replace('T', ' ')} UTC, commit {r['commit']}. Update = forward "
        f"+ backward + AdamW on prepared inputs, median of {r['results'][0]['repeats']}; model "
        f"FLOPs are the analytic 3 × forward count (`vit_flops`), MFU = model FLOP/s / "
        f"{r['peak_tflops']:.0f} TFLOP/s (dense bf16 of an H100 SXM; the H200 has the same).",
        "",
        "| preset | batch | attention | update | images/s | prepare | model TFLOP/step "
        "| XLA cost_analysis TFLOP | MFU | compile |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["results"]:
        rows.append(
            f"| {x['preset']} | {x['batch']} | {x['attention']} | {x['update_s'] * 1e3:.1f} ms "
            f"| {x['images_per_s']:,.0f} | {x['prepare_s'] * 1e3:.1f} ms | "
            f"{x['model_tflop_per_step']:.2f} | {x['xla_tflop_per_step']:.2f} | "
            f"{x['mfu'] * 100:.1f} % | {x['compile_s']:.0f} s |")
    for e in r.get("errors", []):
        rows.append(f"| {e} | | | | | | | | | |")
    agree = r.get("attention_agreement") or {}
    if agree:
        rows += ["", "Attention outputs, relative L2 difference on 8 images: " + "; ".join(
            f"{k.replace('_', ' ')} {v:.1e}" for k, v in agree.items()) + "."]
    return "\n".join(rows)


def gpu_mfu_ab(r: dict) -> str:
    """bench/gpu_mfu_ab.json: bench/gpu_mfu.py runs of one preset with jssl's switches set."""
    dates = sorted(x["date_utc"] for x in r["rows"])
    rows = [
        f"Measured on {r['devices']}× {r['device']}, jax {r['jax']}, "
        f"{dates[0][:16].replace('T', ' ')}–{dates[-1][11:16]} UTC, commit {r['commit']}; "
        f"{r['driver']}, median of {r['rows'][0]['repeats']} updates; MFU against "
        f"{r['peak_tflops']:.0f} TFLOP/s. The first row is {r['baseline']['source']} "
        f"(commit {r['baseline']['commit']}, {r['baseline']['date_utc'][:16].replace('T', ' ')}"
        f" UTC). Each row's command is in the JSON.",
        "",
        "| run | gather backward | patch embedding | cuDNN pad multiple | batch | attention "
        "| update | per 1024 images | images/s | MFU |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for x in [r["baseline"], *r["rows"]]:
        extra = f", `{x['extra_xla_flag']}`" if x["extra_xla_flag"] else ""
        rows.append(
            f"| {x['name']}{extra} | {x['gather_backward']} | {x['patch_embed']} | "
            f"{x['cudnn_pad_multiple']} | {x['batch']} | {x['attention']} | "
            f"{x['update_s'] * 1e3:.1f} ms | {x['update_s'] * 1024 / x['batch'] * 1e3:.1f} ms "
            f"| {x['images_per_s']:,.0f} | {x['mfu'] * 100:.1f} % |")
    return "\n".join(rows)


_KINDS = {"gemm": "GEMM (cuBLAS)", "attention": "attention (cuDNN)",
          "fusion:kInput": "reduction fusions (`kInput`)",
          "fusion:kLoop": "elementwise fusions (`kLoop`)",
          "fusion:kCustom": "other custom fusions (`kCustom`)"}


def gpu_profile_mae(r: dict) -> str:
    """bench/gpu_profile_mae.json: bench/gpu_profile.py on MAE ViT-B/16, time per kind."""
    by_kind, graphs = r["runs"][-1], r["runs"][1]
    busy = by_kind["busy_ms"]
    rows = [f"{r['note']}; {r['date']}. Wall time per update under the profiler: "
            + "; ".join(f"{x['label']} {x['wall_ms']:.1f} ms (device busy {x['busy_ms']:.1f})"
                        for x in r["runs"]) + ".",
            "",
            f"Device time per update by kind ({by_kind['label']}: `{by_kind['command']}`):",
            "",
            "| kind | ms per update | share of device time | TFLOP | TFLOP/s in it |",
            "|---|---:|---:|---:|---:|"]
    for x in by_kind["kinds"]:
        if x["ms"] < 0.05:
            continue
        tf = (f"{x['tflop']:.1f} | {x['tflop_per_s']:.0f}" if "tflop" in x else " | ")
        rows.append(f"| {_KINDS.get(x['kind'], x['kind'])} | {x['ms']:.1f} | "
                    f"{100 * x['ms'] / busy:.0f} % | {tf} |")
    rows += ["", f"The largest kernels ({graphs['label']}: `{graphs['command']}`), summed "
             "over the layers that launch them:", "",
             "| ms per update | launches | kernel | kind | op (first layer named) |",
             "|---:|---:|---|---|---|"]
    for x in graphs["kernels"][:24]:
        rows.append(f"| {x['ms']:.2f} | {x['launches']} | `{x['kernel'][:58]}` | {x['kind']} "
                    f"| {x['op'][:80]} |")
    return "\n".join(rows)


def steps_gpu(r: dict) -> str:
    """bench/steps.py run on a GPU machine."""
    rows = [
        f"Measured by `{r['command']}` on a {r['backend']} machine ({r['nproc']} host cores; "
        f"{r['results'][0].get('device', 'device kind not recorded by this run')}), "
        f"jax {r['jax']}, {r['date_utc'][:16].replace('T', ' ')} UTC.",
        "",
        "| preset | batch | step (median) | examples/s | input pipeline ex/s | compile |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for x in r["results"]:
        rows.append(f"| {x['preset']} | {x['batch']} | {x['step_median_s'] * 1e3:.1f} ms | "
                    f"{x['examples_per_s']:,.0f} | {x['input_examples_per_s']:,.0f} | "
                    f"{x['compile_s']:.1f} s |")
    return "\n".join(rows)
