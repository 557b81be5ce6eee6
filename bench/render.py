"""Regenerate the tables in docs/ from the benchmarks' JSON files.

    python bench/render.py

Each table sits in a doc between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``
and is rebuilt from ``bench/NAME.json`` by the renderer of that name below; a
missing JSON leaves its table as it is. Nothing in a table is typed by hand.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render_gpu import gpu_mfu, gpu_mfu_ab, gpu_profile_mae, steps_gpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hw(h: dict) -> str:
    return (f"{h['cpu']}, {h['cores']} cores, {h['devices']} simulated {h['platform']} devices, "
            f"jax {h['jax']}, {h['date']}, commit {h['commit']}")


def ring_loss(r: dict) -> str:
    n_small, n_big = r["sizes"]["small"], r["sizes"]["big"]
    n_time = r["losses"]["clip"]["time"]["n"]
    rows = [
        f"Measured by `python bench/ring_loss.py` on {_hw(r['hardware'])}. d = {r['d']}, "
        f"float32, tile {r['block']}, P = 8, per-device `memory_analysis()` of loss + gradient.",
        "",
        f"| loss | ring temp N={n_small:,} | ring temp N={n_big:,} | ratio | gather temp "
        f"N={n_big:,} | HLO: permute / all-gather | time ring / gather (N={n_time:,}) "
        f"| loss rel. err vs float64 (N={n_big:,}) | grad rows rel. err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r["losses"].items():
        ring = x["ring_big"]
        rows.append(
            f"| {name} | {x['ring_small']['temp_mib']:.1f} MiB | {ring['temp_mib']:.1f} MiB | "
            f"{x['temp_ratio']:.2f} | {x['gather_big']['temp_mib']:,.0f} MiB | "
            f"{'yes' if ring['collective_permute'] else 'no'} / "
            f"{'yes' if ring['all_gather'] else 'no'} | "
            f"{x['time']['ring_s'] * 1e3:.0f} / {x['time']['gather_s'] * 1e3:.0f} ms "
            f"= {x['time']['ratio']:.2f}× | {x['exact']['loss_rel_err']:.1e} | "
            f"{x['exact']['grad_rows_rel_err']:.1e} |"
        )
    return "\n".join(rows)


def augment(r: dict) -> str:
    rows = [
        f"Measured by `{r['command']}` on {r['cpu']}, {r['nproc']} cores, {r['backend']}, "
        f"jax {r['jax']}, {r['date_utc'][:16].replace('T', ' ')} UTC (1-minute load average "
        f"{r['load_avg_1m_at_end']} at the end). Two views per image, median and minimum of "
        f"{r['results'][0]['repeats']} timed calls after a warm-up.",
        "",
        "| recipe | input | batch | images/s | views/s | median per batch | min per batch "
        "| compile |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for x in r["results"]:
        rows.append(
            f"| {x['recipe']} | {x['size']}×{x['size']}×{x['channels']} → {x['out_size']} | "
            f"{x['batch']} | {x['images_per_s']:,.0f} | {x['views_per_s']:,.0f} | "
            f"{x['median_s'] * 1e3:.1f} ms | {x['min_s'] * 1e3:.1f} ms | {x['compile_s']:.1f} s |"
        )
    return "\n".join(rows)


def results(r: dict) -> str:
    """bench/compare.py: jssl's CPU train steps (per conv implementation) vs PyTorch."""
    loads = [x for p in r["results"] for x in p.get("load_avg_1m", [])]
    rows = [
        f"Measured by `{r['command']}` on {r['nproc']} cores"
        + (f" of an {r['cpu']}" if r.get("cpu") else "") + f", {r['backend']}, jax {r['jax']}, "
        f"torch {r['torch']}, "
        f"{r['date_utc'][:16].replace('T', ' ')} UTC; 1-minute load average "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} during the timed "
        f"repetitions (shared machine: read the ratios, taken side by side). Update = "
        f"forward + backward + optimizer on the same prepared inputs, median of "
        f"{r['results'][0].get('repeats', '?')} alternated repetitions; step = prepare "
        f"(on-device views/masks) + update; params = trainable parameters of each model"
        + (f"; XLA_FLAGS `{r['xla_flags']}`" if r.get("xla_flags") else "")
        + (f"; malloc: {_malloc(r['malloc'])} for jssl and PyTorch alike (same process)"
           if r.get("malloc") else "") + ".",
        "",
        "| preset | batch | jssl conv | update | PyTorch update (threads) | jssl / best PyTorch "
        "| step ex/s "
        "| prepare | compile | input pipeline ex/s | params jssl / torch |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r["results"]:
        if "skipped" in p:
            rows.append(f"| {p['preset']} | | skipped: {p['skipped'][:80]} | | | | | | | | |")
            continue
        params = _params(p)
        torch_s = {k[6:]: v for k, v in p["update_median_s"].items() if k.startswith("torch")}
        peer = (", ".join(f"{v * 1e3:.0f} ms ({k})" for k, v in torch_s.items()) if torch_s
                else (p["note"] or "-"))
        for impl, j in p["jssl"].items():
            ratio = f"{j['ratio_vs_torch']:.2f}" if "ratio_vs_torch" in j else "-"
            rows.append(
                f"| {p['preset']} | {p['batch']} | {impl} | {j['update_median_s'] * 1e3:.0f} ms "
                f"| {peer} | {ratio} | {j['step_examples_per_s']:,.0f} | "
                f"{j['prepare_median_s'] * 1e3:.0f} ms | {j['compile_s']:.1f} s | "
                f"{j['input_examples_per_s']:,.0f} | {params} |")
    return "\n".join(rows)


def _params(p: dict) -> str:
    """"jssl / torch" parameter counts of a compare.py result, flagged where they differ."""
    n = p.get("params")
    if not n:
        return "-"
    torch_n = "-" if n.get("torch") is None else f"{n['torch']:,}"
    text = f"{n['jssl']:,} / {torch_n}"
    return f"**{text} (differ)**" if p.get("params_match") is False else text


def conv_layers(r: dict) -> str:
    """bench/conv_layers.py: per-convolution forward and gradient times (and PyTorch's)."""
    torch = r.get("torch")
    flags = r.get("xla_flags")
    rows = [
        f"Measured by `{r['command']}` on {r['nproc']} cores, jax {r['jax']}"
        + (f", torch {torch}" if torch else "") + f", "
        f"{r['date_utc'][:16].replace('T', ' ')} UTC, 1-minute load average "
        f"{r['load_avg_1m'][0]} → {r['load_avg_1m'][1]}; batch {r['batch']}, median ms"
        + (f"; XLA_FLAGS `{flags}`" if flags else "")
        + (f"; malloc {_malloc(r['malloc'])}" if "malloc" in r else "") + ".",
        "",
        "| layer (side, C_in→C_out, k, stride) | forward | dX (XLA) | dX phases "
        "| dW (XLA) | dW chunked scan "
        "| dW whole-batch im2col |" + (" XLA fwd+dX+dW | PyTorch fwd + bwd (threads) "
                                        "| XLA / PyTorch |" if torch else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if torch else ""),
    ]
    for x in r["results"]:
        phase = f"{x['dx_phase_ms']:.1f}" if "dx_phase_ms" in x else "–"
        row = (f"| {x['side']}, {x['cin']}→{x['cout']}, {x['kernel']}, {x['stride']} | "
               f"{x['fwd_ms']:.1f} | {x['dx_ms']:.1f} | {phase} | {x['dw_xla_ms']:.1f} | "
               f"{x['dw_chunked_ms']:.1f} | {x['dw_im2col_ms']:.1f} |")
        if torch:
            row += (f" {x['xla_total_ms']:.1f} | {x['torch_fwd_ms']:.1f} + "
                    f"{x['torch_bwd_ms']:.1f} ({x['torch_threads']}t) | "
                    f"{x['xla_over_torch']:.2f} |")
        rows.append(row)
    if torch:
        xla = sum(x["xla_total_ms"] for x in r["results"])
        tor = sum(x["torch_total_ms"] for x in r["results"])
        rows.append(f"| all layers | | | | | | | {xla:.1f} | {tor:.1f} | {xla / tor:.2f} |")
    return "\n".join(rows)


def loader(r: dict) -> str:
    """bench/loader.py: host time per training batch, whole-batch gathers vs grain's reads."""
    loads = [x for res in r["results"] for x in res["load_avg_1m"]]
    rows = [f"Measured by `{r['command']}` on {r['cpu']}, {r['nproc']} cores, jax {r['jax']}, "
            f"{r['date_utc'][:16].replace('T', ' ')} UTC; {r['dataset']}; 1-minute load "
            f"average {min(loads):.1f}-{max(loads):.1f} (shared machine: read the ratio, "
            f"taken side by side). Median of {r['results'][0]['repeats']} alternated "
            f"`next()` calls; the batches were checked equal.", "",
            "| batch | one gather per batch | grain, record by record | speed-up |",
            "|---:|---:|---:|---:|"]
    for x in r["results"]:
        m, e = x["median_s"], x["examples_per_s"]
        rows.append(f"| {x['batch']} | {m['gather'] * 1e3:.1f} ms ({e['gather']:,.0f} ex/s) "
                    f"| {m['grain'] * 1e3:.1f} ms ({e['grain']:,.0f} ex/s) "
                    f"| {x['speedup']}× |")
    return "\n".join(rows)


def _malloc(preload: str) -> str:
    return "glibc" if preload == "glibc" else f"`LD_PRELOAD={preload}`"


def _measured_in_one_process(r: dict, extra: str = "") -> str:
    """Header of the one-process benchmarks: command, machine, jax, date, malloc."""
    h = r["hardware"]
    return (f"Measured by `{r['command']}` on {h['cpu']}, {h['nproc']} cores, jax {r['jax']}"
            f"{extra}, {r['date_utc'][:16].replace('T', ' ')} UTC, malloc "
            f"{_malloc(r['malloc'])}.")


def _measured_in_processes(r: dict) -> str:
    """Header of the fresh-process benchmarks: command, machine, date, load range."""
    h = r["hardware"]
    loads = [x for row in r["results"] for x in row["load"]]
    return (f"Measured by `{r['command']}` on {h['cpu']}, {h['nproc']} cores, jax {r['jax']}, "
            f"{r['date_utc'][:16].replace('T', ' ')} UTC; 1-minute load average "
            f"{min(loads)}-{max(loads)}. One fresh process per measurement")


def xla_cpu_flag(r: dict) -> str:
    rows = [
        f"{_measured_in_processes(r)} (XLA reads its flags "
        f"once per process), flag on and off alternating; update = forward + backward + "
        f"optimizer, median over rounds of each process's median. On: `{r['flag']}`.",
        "",
        "| preset | conv_impl | update, flag on | update, flag off | on / off | processes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for x in r["results"]:
        m = x["median_s"]
        rows.append(f"| {x['preset']} | {x['conv_impl'] or '–'} | {m['on'] * 1e3:.0f} ms "
                    f"| {m['off'] * 1e3:.0f} ms | {x['ratio_on_off']:.2f} "
                    f"| {len(x['runs']['on'])} + {len(x['runs']['off'])} |")
    return "\n".join(rows)


def gelu(r: dict) -> str:
    """bench/gelu.py: jssl's erf GELU against jax.nn.gelu's erfc form, in one process."""
    rows = [_measured_in_one_process(r) + " One process; the two forms alternate, median of "
            "each. Update = forward + backward + optimizer of the preset; GELU alone on a "
            "[4352, 512] float32 array.",
            "",
            "| what | erf (jssl) | erfc (`jax.nn.gelu`) | erf / erfc |",
            "|---|---:|---:|---:|"]
    for part, x in r["alone"].items():
        m = x["median_s"]
        rows.append(f"| GELU alone, {part} | {m['erf'] * 1e3:.2f} ms | {m['erfc'] * 1e3:.2f} ms "
                    f"| {x['ratio_erf_erfc']:.2f} |")
    for x in r["results"]:
        m = x["median_s"]
        rows.append(f"| {x['preset']} update (load {x['load']}) | {m['erf'] * 1e3:.0f} ms "
                    f"| {m['erfc'] * 1e3:.0f} ms | {x['ratio_erf_erfc']:.3f} |")
    return "\n".join(rows)


def _switch_table(r: dict, what: str, on: str, off: str) -> str:
    rows = [_measured_in_one_process(r) + " One process; on and off alternate, median of "
            f"each. Update = forward + backward + optimizer of the preset{what}.",
            "",
            f"| preset | update, {on} | update, {off} | on / off | 1-minute load |",
            "|---|---:|---:|---:|---:|"]
    for x in r["results"]:
        m = x["median_s"]
        rows.append(f"| {x['preset']} | {m['on'] * 1e3:.0f} ms | {m['off'] * 1e3:.0f} ms "
                    f"| {x['ratio_on_off']:.3f} | {x['load']} |")
    return "\n".join(rows)


def conv_materialise(r: dict) -> str:
    """bench/conv_materialise.py: conv inputs materialised on CPU, on against off."""
    return _switch_table(r, ", ResNet `conv_impl=\"fast\"`", "materialised", "not")


def dense_grad(r: dict) -> str:
    """bench/dense_grad.py: the dense layers' direct kernel gradient on CPU, on against off."""
    return _switch_table(r, "", "direct dW", "JAX's transpose rule")


def batch_norm(r: dict) -> str:
    """bench/batch_norm.py: the ResNets' BatchNorm, jssl's against nn.BatchNorm."""
    return _switch_table(r, ", ResNet `conv_impl=\"fast\"`", "jssl BatchNorm", "nn.BatchNorm")


def bn_wide_rows(r: dict) -> str:
    """bench/bn_wide_rows.py: jssl's BatchNorm statistics over wide rows, on against off."""
    return _switch_table(r, ", ResNet `conv_impl=\"fast\"`", "wide rows", "[M, C] columns")


def head_major(r: dict) -> str:
    """bench/head_major.py: attention computed head-major on CPU against the einsum forms."""
    return _switch_table(r, "", "head-major", "einsum")


def native_attention(r: dict) -> str:
    """bench/native_attention.py: the native CPU attention kernel against XLA's attention."""
    return _switch_table(r, "", "native kernel", "XLA (head-major)")


def patch_embed(r: dict) -> str:
    """bench/patch_embed.py: the ViT patch embedding as a matmul against the convolution."""
    return _switch_table(r, " (ViT)", "matmul", "convolution")


def distinct_gather(r: dict) -> str:
    """bench/distinct_gather.py: MAE's gathers' backward as gathers against a scatter-add."""
    return _switch_table(r, "", "gather backward", "scatter-add")


def text_ops(r: dict) -> str:
    """bench/text_ops.py: jssl's Dropout and argmax accuracy against nn.Dropout and
    jnp.argmax, alone and in the text presets' updates, in one process."""
    rows = [_measured_in_one_process(r) + " One process; the variants alternate, median of "
            "each. Update = forward + backward + optimizer of the preset; \"old\" = "
            "`nn.Dropout` and `jnp.argmax` both.",
            "",
            "| what | jssl | `nn.Dropout` only | `jnp.argmax` only | old | jssl / old |",
            "|---|---:|---:|---:|---:|---:|"]
    for part, x in r["alone"].items():
        m = x["median_s"]
        rows.append(f"| {part} alone {tuple(x['shape'])} | {m['jssl'] * 1e3:.2f} ms | – | – "
                    f"| {m['old'] * 1e3:.2f} ms | {x['ratio_jssl_old']:.2f} |")
    for x in r["results"]:
        m = x["median_s"]
        cells = " | ".join(f"{m[k] * 1e3:.0f} ms" for k in ("jssl", "nn.Dropout", "jnp.argmax",
                                                            "old"))
        rows.append(f"| {x['preset']} update (load {x['load']}) | {cells} "
                    f"| {x['ratios']['old']:.3f} |")
    return "\n".join(rows)


def _kernel_intro(r: dict) -> str:
    """The first line of a one-kernel XLA:CPU-against-PyTorch table (bench/kernel_ab.py)."""
    return (_measured_in_one_process(r, f", torch {r['torch']} ({r['torch_threads']} threads)")
            + f" XLA_FLAGS `{r['xla_flags']}`. One process, blocks of back-to-back calls "
            f"alternating between the frameworks; medians.")


def dots(r: dict) -> str:
    """bench/dots.py: the BERT update's matmuls, XLA:CPU against PyTorch, one at a time."""
    rows = [_kernel_intro(r), "",
            "| layer ([M, K]·[K, N]) | matmul | XLA:CPU | PyTorch | XLA / PyTorch |",
            "|---|---|---:|---:|---:|"]
    for x in r["results"]:
        m = x["median_s"]
        rows.append(f"| {x['layer']} ([{x['m']}, {x['k']}]·[{x['k']}, {x['n']}]) "
                    f"| {x['matmul']} | {m['jax'] * 1e3:.2f} ms | {m['torch'] * 1e3:.2f} ms "
                    f"| {x['ratio_jax_torch']:.2f} |")
    return "\n".join(rows)


def attention(r: dict) -> str:
    """bench/attention.py: one attention's forward + backward, XLA:CPU against PyTorch's
    fused scaled_dot_product_attention, at the CPU presets' shapes."""
    native = "native" in r["results"][0]["median_s"]  # runs before the native kernel: two
    head = ("| attention | [B, L, H, D] | part | " + ("jssl native | " if native else "")
            + "XLA:CPU | PyTorch SDPA | " + ("native / PyTorch | " if native else "")
            + "XLA / PyTorch |")
    march = (f" Native kernel built with `{r['native_march']}`"
             f"{' (JSSL_NATIVE_MARCH)' if r['native_march'] != '-march=native' else ''}."
             if native and "native_march" in r else "")
    rows = [_kernel_intro(r) + march, "", head,
            "|---|---|---|" + "---:|" * (head.count("|") - 4)]
    for x in r["results"]:
        m = x["median_s"]
        cells = [x["attention"], str(x["shape"]), x["part"]]
        cells += [f"{m['native'] * 1e3:.2f} ms"] if native else []
        cells += [f"{m['jax'] * 1e3:.2f} ms", f"{m['torch'] * 1e3:.2f} ms"]
        cells += [f"{x['ratio_native_torch']:.2f}"] if native else []
        rows.append("| " + " | ".join(cells + [f"{x['ratio_jax_torch']:.2f}"]) + " |")
    return "\n".join(rows)


def gn_convnet(r: dict, variants: bool = True) -> str:
    """bench/gn_convnet.py: the issue's GroupNorm CNN, with jssl's flag and tcmalloc (and,
    with ``variants``, if recorded, with glibc's malloc in bench/gn_convnet_glibc.json and
    without the flag in bench/gn_convnet_flag_off.json)."""
    runs = [("on", r)]
    for name, label in (("gn_convnet_glibc.json", "on"),
                        ("gn_convnet_flag_off.json", "off (`JSSL_XLA_CPU_FLAGS=0`)")):
        if variants and (ROOT / "bench" / name).exists():
            runs.append((label, json.loads((ROOT / "bench" / name).read_text())))
    h = r["hardware"]
    rows = [
        f"Measured by `{r['command']}` on {h['cpu']}, {h['nproc']} cores, jax "
        f"{h['jax_version']}, torch {r['torch']}, {r['date_utc'][:16].replace('T', ' ')} UTC; "
        f"batch {r['batch']} of 28×28×1, {r['params']:,} parameters in each model; median of "
        f"alternated updates (forward + backward + AdamW); ratios in the column order.",
        "",
        "| jssl's XLA:CPU flag | malloc (all) | Flax layers | Flax + jssl GroupNorm "
        "| jssl Conv + GroupNorm | PyTorch 1 thread | PyTorch 2 threads "
        "| each / best PyTorch | 1-minute load |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, x in runs:
        m = x["median_s"]
        best = m[x.get("best_torch", "torch_2t")]
        flax_rows = [m.get(k) for k in ("jax", "jax_jssl_norm", "jax_jssl")]
        cells = [f"{v * 1e3:.0f} ms" if v else "–" for v in flax_rows]
        ratios = " / ".join(f"{v / best:.2f}" if v else "–" for v in flax_rows)
        rows.append(f"| {label} | {_malloc(x.get('malloc', 'glibc'))} | {' | '.join(cells)} "
                    f"| {m['torch_1t'] * 1e3:.0f} ms | {m['torch_2t'] * 1e3:.0f} ms "
                    f"| {ratios} | {min(x['load_avg_1m'])}-{max(x['load_avg_1m'])} |")
    return "\n".join(rows)


def cpu_malloc(r: dict) -> str:
    """bench/cpu_malloc.py: the update with glibc, glibc + mallopt and tcmalloc."""
    settings = r["settings"]
    rows = [
        f"{_measured_in_processes(r)}, the settings alternating; {r['warmup']} warm-up "
        f"updates, then the median of {r['repeats']}; "
        f"time: median over rounds (ratio to glibc); page faults per update and resident "
        f"memory after the timed updates.",
        "",
        "| preset | " + " | ".join(settings) + " | page faults per update ("
        + " / ".join(settings) + ") | resident MB (" + " / ".join(settings) + ") |",
        "|---|" + "---:|" * len(settings) + "---:|---:|",
    ]
    for x in r["results"]:
        cells = [f"{x['median_s'][s] * 1e3:.0f} ms ({x['ratio'][s]:.2f})" for s in settings]
        faults = " / ".join(f"{x['faults_per_update'][s]:,.0f}" for s in settings)
        rss = " / ".join(f"{x['rss_mb'][s]:,.0f}" for s in settings)
        rows.append(f"| {x['preset']} | " + " | ".join(cells) + f" | {faults} | {rss} |")
    return "\n".join(rows)


RENDERERS: dict[str, Callable[[dict], str]] = {"cpu_malloc": cpu_malloc,
                                               "ring_loss": ring_loss, "augment": augment,
                                               "results": results, "conv_layers": conv_layers,
                                               "gpu_mfu": gpu_mfu, "steps_gpu": steps_gpu,
                                               "gpu_mfu_ab": gpu_mfu_ab,
                                               "gpu_profile_mae": gpu_profile_mae,
                                               "patch_embed": patch_embed,
                                               "distinct_gather": distinct_gather,
                                               "loader": loader, "xla_cpu_flag": xla_cpu_flag,
                                               "gn_convnet": gn_convnet, "gelu": gelu,
                                               "conv_materialise": conv_materialise,
                                               "dense_grad": dense_grad,
                                               "batch_norm": batch_norm,
                                               "bn_wide_rows": bn_wide_rows,
                                               "head_major": head_major,
                                               "text_ops": text_ops, "dots": dots,
                                               "attention": attention,
                                               "attention_native": attention,
                                               "attention_native_avx2": attention,
                                               "native_attention": native_attention,
                                               # the same benchmarks on a second machine
                                               "results_xeon": results,
                                               "gpu_mfu_h100": gpu_mfu,
                                               "results_xeon_conv": results,
                                               "results_xeon_dense": results,
                                               "results_xeon_bn": results,
                                               "results_xeon_attn": results,
                                               "results_xeon_native": results,
                                               "xla_cpu_flag_xeon": xla_cpu_flag,
                                               "gn_convnet_xeon": lambda r: gn_convnet(
                                                   r, variants=False)}


def render(doc: Path) -> bool:
    text = doc.read_text()
    changed = text
    for name, fn in RENDERERS.items():
        src = ROOT / "bench" / f"{name}.json"
        pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)",
                             re.S)
        if src.exists() and pattern.search(changed):
            table = fn(json.loads(src.read_text()))
            changed = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), changed)
    if changed != text:
        doc.write_text(changed)
    return changed != text


def main() -> None:
    for doc in sorted(DOCS.glob("*.md")):
        if render(doc):
            print(f"updated {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
