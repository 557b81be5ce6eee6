"""``docs/RESULTS.md`` and ``docs/label_efficiency.png``, generated from the runs' JSON.

    jssl results --add runs/simclr_fmnist      # record a finished run (copies results.json)
    jssl results                               # regenerate the tables and the plot
    jssl results --check                       # exit 1 if RESULTS.md is stale

Recorded runs live in ``docs/results/<config name>.json`` (each a run's ``results.json``,
which carries its command, backbone, steps, wall time, hardware and date); the raw-pixel
baselines come from ``bench/baselines.json`` (``python bench/baselines.py``). The tables sit
between ``<!-- table:NAME -->`` markers in RESULTS.md; the prose around them is kept.
Nothing in a table is typed by hand.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNS = DOCS / "results"
BASELINES = ROOT / "bench" / "baselines.json"
FRACTIONS = (0.01, 0.1, 1.0)


def load_runs(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("*.json"))]


def load_baselines(path: Path = BASELINES) -> dict[tuple[str, float], float]:
    """{("linear", fraction) | ("knn20", 1.0): accuracy} of the raw-pixel baselines."""
    if not path.exists():
        return {}
    out = {}
    for r in json.loads(path.read_text())["results"]:
        if r["protocol"] == "linear":
            out[("linear", float(r["label_fraction"]))] = r["value"]
        elif r["protocol"] == "knn" and int(r["params"].get("k", 0)) == 20:
            out[("knn20", 1.0)] = r["value"]
    return out


def _find(run: dict, kind: str, fraction: float = 1.0, k: int | None = None) -> float | None:
    for r in run.get("results", []):
        if r.get("kind") == kind and abs(r["label_fraction"] - fraction) < 1e-9 and (
                k is None or r.get("k") == k):
            return r["accuracy"]
    return None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


STANDARD = ("linear", "knn", "scratch", "finetune", "distill")
#: methods trained with labels (the rest are SSL runs)
LABELLED = ("supervised", "distill")


def _load(run: dict) -> str:
    """' (2.1)' after a wall time: the run's 1-minute load average at its end, if recorded."""
    load = run.get("load_avg_1m")
    return "" if load is None else f" ({load:.1f})"


def _train_time(run: dict) -> str:
    """``12.3 min (load 2.0)``, or "–" for a run evaluated without its training record."""
    if run.get("train_wall_s") is None:
        return "–"
    return f"{run['train_wall_s'] / 60:.1f} min{_load(run)}"


def _value(r: dict) -> str:
    return f"{100 * r['accuracy']:.2f} %" if "accuracy" in r else f"{r['value']:.2f}"


def dataset_of(run: dict) -> str:
    """The run's training data (``dataset`` in newer records, else from its config name)."""
    if run.get("dataset"):
        return run["dataset"]
    return "fortunes" if "fortunes" in run["config"] else "fashion_mnist_local"


def text_table(runs: list[dict]) -> str:
    rows = ["| run | method | epochs | train time (load) | held-out pretext | category probe "
            "100 % / 10 % labels | same encoder, random init | hardware, date | command |",
            "|---|---|---:|---:|---|---:|---:|---|---|"]
    for run in runs:
        pretext = "; ".join(f"{r['protocol']} {_value(r)}" for r in run["results"]
                            if not r.get("kind", "").startswith("linear")) or "–"
        rows.append(
            f"| {run['config']} | {run['method']} | {run.get('epochs', 0):.2f} "
            f"| {_train_time(run)} | {pretext} "
            f"| {_pct(_find(run, 'linear'))} / {_pct(_find(run, 'linear', 0.1))} "
            f"| {_pct(_find(run, 'linear_random_init'))} / "
            f"{_pct(_find(run, 'linear_random_init', 0.1))} "
            f"| {run['hardware']}, {run['date']} | `{run['command']}` |")
    return "\n".join(rows)


def speech_table(runs: list[dict]) -> str:
    """Speech runs: held-out pretext numbers and digit probes (100 / 10 / 5 % labels) of the
    pretrained encoder, the same encoder untrained, and log-mel baselines."""
    cols = (("pretrained", "linear"), ("random init", "linear_random_init"),
            ("log-mel frames × bands", "linear_logmel_frames"),
            ("log-mel band mean + std", "linear_logmel_mean_std"))
    rows = ["| run | method | epochs | train time (load) | held-out pretext | "
            + " | ".join(f"{name}: probe 100 / 10 / 5 %" for name, _ in cols)
            + " | hardware, date | command |",
            "|---|---|---:|---:|---|" + "---:|" * len(cols) + "---|---|"]
    for run in runs:
        pretext = "; ".join(f"{r['protocol']} {_value(r)}" for r in run["results"]
                            if r.get("kind") == "pretext") or "–"
        probes = " | ".join(" / ".join(_pct(_find(run, kind, f)) for f in (1.0, 0.1, 0.05))
                            for _, kind in cols)
        rows.append(
            f"| {run['config']} | {run['method']} | {run.get('epochs', 0):.1f} "
            f"| {_train_time(run)} | {pretext} | {probes} "
            f"| {run['hardware']}, {run['date']} | `{run['command']}` |")
    return "\n".join(rows)


def _is_ssl(run: dict) -> bool:
    return run["method"] not in LABELLED


def _distilled(run: dict) -> dict | None:
    """The distilled student's own result (its label fraction is the teacher's)."""
    return next((r for r in run.get("results", []) if r.get("kind") == "distill"), None)


def runs_table(runs: list[dict], baselines: dict) -> str:
    rows = ["| run | method | backbone | epochs | train time (load) | linear probe | kNN (k=20) "
            "| linear 1 % | own classifier | other protocols | hardware, date | command |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for run in runs:
        own = _find(run, "finetune", run.get("label_fraction", 1.0)) or _find(
            run, "scratch", run.get("label_fraction", 1.0))
        labels = "" if _is_ssl(run) else f", {run.get('label_fraction', 1.0):.0%} labels"
        if distilled := _distilled(run):
            own = distilled["accuracy"]
            labels = f", {distilled['label_fraction']:.0%} labels (the teacher's)"
        other = "; ".join(f"{r['protocol']} {_value(r)}" for r in run.get("results", [])
                          if r.get("kind") not in STANDARD) or "–"
        rows.append(
            f"| {run['config']} | {run['method']}{labels} | {run['backbone']} "
            f"| {run.get('epochs', 0):.1f} | {_train_time(run)} "
            f"| {_pct(_find(run, 'linear'))} | {_pct(_find(run, 'knn', k=20))} "
            f"| {_pct(_find(run, 'linear', 0.01))} | {_pct(own)} | {other} "
            f"| {run['hardware']}, {run['date']} | `{run['command']}` |")
    if baselines:
        rows.append(f"| raw pixels | logistic regression / kNN on the 784 pixels | – | – | – "
                    f"| {_pct(baselines.get(('linear', 1.0)))} "
                    f"| {_pct(baselines.get(('knn20', 1.0)))} "
                    f"| {_pct(baselines.get(('linear', 0.01)))} | – | – | see bench/baselines.json "
                    f"| `python bench/baselines.py` |")
    return "\n".join(rows)


def _init_name(run: dict) -> str:
    """The name of the run a fine-tuning run started from ('' when from scratch)."""
    return Path(str(run.get("init_from") or "").rstrip("/")).name


def _best_per_fraction(runs: list[dict], kind: str) -> dict[float, float]:
    """{label fraction: best ``kind`` accuracy} over ``runs`` at their own label fraction."""
    points: dict[float, float] = {}
    for r in runs:
        if a := _find(r, kind, r["label_fraction"]):
            points[r["label_fraction"]] = max(a, points.get(r["label_fraction"], 0.0))
    return points


def backbones_by_evidence(runs: list[dict]) -> list[str]:
    """Backbones that have supervised runs and a from-scratch or SSL run to compare them
    with, the best-covered first: ranked by the number of
    label fractions with a from-scratch run, then by the best SSL linear probe on the
    backbone, then by name (deterministic whatever the order of the files)."""
    def best_probe(backbone: str) -> float:
        return max((_find(r, "linear") or 0.0 for r in runs
                    if _is_ssl(r) and r["backbone"] == backbone), default=0.0)

    def covered(backbone: str) -> int:
        return len({r["label_fraction"] for r in runs if r["method"] == "supervised"
                    and r["backbone"] == backbone and not _init_name(r)})

    found = sorted({r["backbone"] for r in runs if r["method"] == "supervised"
                    and (covered(r["backbone"]) or best_probe(r["backbone"]))})
    return sorted(found, key=lambda b: (-covered(b), -best_probe(b), b))


def label_efficiency(runs: list[dict], baselines: dict,
                     backbone: str | None = None) -> dict[str, dict[float, float]]:
    """{curve name: {label fraction: accuracy}} for the best SSL run and the baselines.

    Same backbone on every curve: ``backbone``, by default the first of
    :func:`backbones_by_evidence`. The SSL curves come from the best linear probe on it."""
    same = backbone or next(iter(backbones_by_evidence(runs)), None)
    ssl = [r for r in runs if _is_ssl(r) and _find(r, "linear") is not None
           and (same is None or r["backbone"] == same)]
    best = max(ssl, key=lambda r: _find(r, "linear")) if ssl else None
    curves: dict[str, dict[float, float]] = {}
    if best is not None:
        curves[f"{best['config']} + linear probe"] = {
            f: a for f in FRACTIONS if (a := _find(best, "linear", f)) is not None}

    on_same = [r for r in runs if r["method"] == "supervised" and r["backbone"] == same]
    finetuned = [r for r in on_same if _init_name(r)]
    distilled = _distillation_curve(runs, same, finetuned, best and best["config"])
    if best is not None and any(_init_name(r) == best["config"] for r in finetuned):
        finetuned = [r for r in finetuned if _init_name(r) == best["config"]]
    if points := _best_per_fraction(finetuned, "finetune"):  # named after its init run(s)
        sources = " / ".join(sorted({_init_name(r) for r in finetuned}))
        curves[f"{sources} + fine-tuning"] = points
    curves.update(distilled)
    if points := _best_per_fraction(on_same, "scratch"):
        curves["supervised from scratch"] = points
    raw = {f: baselines[("linear", f)] for f in FRACTIONS if ("linear", f) in baselines}
    if raw:
        curves["raw pixels + logistic regression"] = raw
    return curves


def _teacher_names(run: dict) -> list[str]:
    """Run names of a distilled run's teachers (``teacher_from``, comma-separated)."""
    return [Path(t.strip().rstrip("/")).name
            for t in str(run.get("teacher_from") or "").split(",") if t.strip()]


def _distillation_curve(runs: list[dict], backbone: str | None, finetuned: list[dict],
                        prefer: str | None) -> dict[str, dict[float, float]]:
    """{"<SSL run> + fine-tuning + distillation": {fraction: accuracy}} of the distilled
    students on ``backbone`` whose teachers (all of an ensemble's) are recorded fine-tuning
    runs (``finetuned``) or, for later rounds, recorded students of those; best per label
    fraction; only those with a first teacher that started from the SSL run ``prefer`` when
    there are any; empty if none."""
    teachers = {r["config"]: {_init_name(r)} for r in finetuned}
    candidates = [r for r in runs if r["method"] == "distill" and r["backbone"] == backbone]
    students: list[tuple[dict, set[str]]] = []
    while found := [(r, set().union(*(teachers[t] for t in names)))
                    for r in candidates if r["config"] not in teachers
                    and (names := _teacher_names(r)) and all(t in teachers for t in names)]:
        students += found
        teachers.update({r["config"]: source for r, source in found})
    if any(prefer in source for _, source in students):
        students = [(r, source) for r, source in students if prefer in source]
    points: dict[float, float] = {}
    sources = set()
    for r, source in students:
        if (own := _distilled(r)) is not None:
            f = own["label_fraction"]
            points[f] = max(own["accuracy"], points.get(f, 0.0))
            sources |= source
    if not points:
        return {}
    return {f"{' / '.join(sorted(sources))} + fine-tuning + distillation": points}


def label_efficiency_table(curves: dict[str, dict[float, float]]) -> str:
    rows = ["| labels | " + " | ".join(curves) + " |",
            "|---|" + "---:|" * len(curves)]
    for f in FRACTIONS:
        rows.append(f"| {f:.0%} | " + " | ".join(_pct(c.get(f)) for c in curves.values()) + " |")
    return "\n".join(rows)


#: one colour per kind of curve, the same in every panel
COLOURS = (("distillation", "C2"), ("fine-tuning", "C1"), ("linear probe", "C0"),
           ("from scratch", "C3"), ("raw pixels", "C7"))


def _colour(curve: str) -> str:
    return next((c for key, c in COLOURS if key in curve), "C4")


def plot(per_backbone: dict[str, dict[str, dict[float, float]]], path: Path) -> None:
    """One panel per backbone (its curves from :func:`label_efficiency`), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(per_backbone)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 5.2), dpi=120, squeeze=False)
    for ax, (backbone, curves) in zip(axes[0], per_backbone.items(), strict=True):
        for name, points in curves.items():
            xs = sorted(points)
            ax.plot([100 * x for x in xs], [100 * points[x] for x in xs], marker="o",
                    label=name, color=_colour(name))
        ax.set_title(backbone, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training examples (%)")
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.set_xticks([1, 10, 100], ["1 %", "10 %", "100 %"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no timestamp: same input, same bytes
    plt.close(fig)


def render(doc: str, tables: dict[str, str]) -> str:
    for name, body in tables.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
        if not pattern.search(doc):
            raise ValueError(f"docs/RESULTS.md has no <!-- table:{name} --> ... "
                             f"<!-- /table:{name} --> markers; add them where the table goes")
        doc = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), doc)
    return doc


def add_run(workdir: str) -> Path:
    src = Path(workdir) / "results.json"
    if not src.exists():
        raise FileNotFoundError(f"--add {workdir!r}: no results.json there; the run must "
                                f"finish its evaluation first")
    name = json.loads(src.read_text())["config"]
    RUNS.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(src, RUNS / f"{name}.json"))


def main(runs_dir: str | None = None, *, check: bool = False, add: list[str] = ()) -> int:
    for workdir in add:
        print("recorded", add_run(workdir))
    every = load_runs(Path(runs_dir) if runs_dir else RUNS)
    runs = [r for r in every if dataset_of(r) == "fashion_mnist_local"]
    text = [r for r in every if dataset_of(r) == "fortunes"]
    speech = [r for r in every if dataset_of(r).startswith("spoken_digits_local")]
    baselines = load_baselines()
    per_backbone = {b: label_efficiency(runs, baselines, b) for b in backbones_by_evidence(runs)}
    doc_path = DOCS / "RESULTS.md"
    doc = doc_path.read_text()
    new = render(doc, {"runs": runs_table(runs, baselines), "text_runs": text_table(text),
                       "label_efficiency": "\n\n".join(
                           f"**Backbone: {b}**\n\n{label_efficiency_table(c)}"
                           for b, c in per_backbone.items()),
                       "speech_runs": speech_table(speech)})
    if check:
        if new != doc:
            print("docs/RESULTS.md is stale: run `jssl results`")
            return 1
        return 0
    doc_path.write_text(new)
    if per_backbone:
        plot(per_backbone, DOCS / "label_efficiency.png")
    print(f"wrote {doc_path} ({len(every)} runs)")
    return 0
