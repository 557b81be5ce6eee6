"""`jssl.main`'s work: train a config, then evaluate its frozen features.

Evaluation protocols (config.eval): weighted kNN (k in ``knn_k``, T = 0.07) and
linear probes with the label fractions in ``label_fractions``, on features of
the test split against the train split. Results go to ``workdir/results.json``
and a printed table that names the protocol of every number. PNG plots of the
training curves (``curves.png``) and of a 2-D PCA of the test features coloured
by class (``embedding.png``) are written beside them.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jssl.data.inputs import eval_arrays
from jssl.evaluate.features import extract_features
from jssl.evaluate.knn import knn_accuracy
from jssl.evaluate.linear import linear_probe
from jssl.train.loop import train
from jssl.train.plots import plot_curves, plot_embedding_2d

log = logging.getLogger(__name__)


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dev = jax.devices()[0]
    return f"{jax.device_count()}× {dev.platform} ({dev.device_kind}); host {cpu}, " \
           f"{os.cpu_count()} cores"


def command_line() -> str:
    """This process's command line, as a user would type it (``python -m jssl.main ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("jssl/main.py", "jssl" + os.sep + "main.py")):
        argv[0:1] = ["python", "-m", "jssl.main"]
    elif argv and os.path.basename(argv[0]) == "jssl":
        argv[0] = "jssl"
    return " ".join(argv)


def backbone(config: Any) -> str:
    """A short name of the encoder config, e.g. ``resnet tiny (s2d stem, widths 16-32-64-128)``."""
    enc = dict(config.model.encoder)
    name = f"{enc.pop('name', '?')} {enc.pop('preset', '')}".strip()
    extras = []
    if "stem" in enc:
        extras.append(f"{enc.pop('stem')} stem")
    if "widths" in enc:
        extras.append("widths " + "-".join(str(w) for w in enc.pop("widths")))
    extras += [f"{k} {v}" for k, v in sorted(enc.items()) if k not in ("norm", "dtype")]
    name = f"{name} ({', '.join(extras)})" if extras else name
    keep = int((config.model.get("projector") or {}).get("keep_hidden", 0) or 0)
    if keep:  # a classifier on kept projector blocks (SimCLRv2): not the bare encoder
        name += f" + {keep} projector block{'s' if keep > 1 else ''} " \
                f"({config.model.projector.hidden_dim})"
    return name


def evaluate(config: Any, state, method, workdir: Path) -> tuple[list[dict], int]:
    """(results, number of train-split examples)."""
    ev = config.eval
    train_x, train_y = eval_arrays(config.data, config.data.train_split)
    test_x, test_y = eval_arrays(config.data, config.data.test_split)
    variables = {"params": state.params, **state.variables}
    t0 = time.perf_counter()
    f_train = extract_features(method, variables, state.extra, train_x, method.mesh)
    f_test = extract_features(method, variables, state.extra, test_x, method.mesh)
    log.info("features %s in %.1f s", f_train.shape, time.perf_counter() - t0)
    if jax.process_index() == 0:
        plot_embedding_2d(f_test, test_y, workdir / "embedding.png",
                          title=f"{config.method}: test features (PCA)")
    results = []
    if hasattr(method, "predict"):  # a supervised / fine-tuned model: its own classifier
        logits = extract_features(method, variables, state.extra, test_x, method.mesh,
                                  fn="predict")
        protocol, kind, frac = method.own_protocol()
        results.append({"protocol": protocol, "label_fraction": frac, "kind": kind,
                        "accuracy": float(np.mean(np.argmax(logits, -1) == test_y))})
    for k in ev.knn_k:
        acc = knn_accuracy(f_train, train_y, f_test, test_y, num_classes=ev.num_classes, k=k,
                           temperature=ev.knn_temperature)
        results.append({"protocol": f"kNN (k={k}, T={ev.knn_temperature})", "kind": "knn",
                        "k": int(k), "label_fraction": 1.0, "accuracy": acc})
    for frac in ev.label_fractions:
        out = linear_probe(f_train, train_y, f_test, test_y, num_classes=ev.num_classes,
                           label_fraction=frac, seed=config.seed)
        results.append({"protocol": f"linear probe ({frac:.0%} labels)", "kind": "linear",
                        "label_fraction": frac,
                        "accuracy": out["accuracy"], "weight_decay": out["weight_decay"]})
    return results, len(train_y)


def run(config: Any, workdir: str | os.PathLike, mode: str = "train_eval") -> dict:
    t0 = time.perf_counter()
    state, method = train(config, workdir, restore_only=(mode == "eval"))
    train_time = time.perf_counter() - t0
    summary = {"method": config.method, "config": config.get("name", config.method),
               "dataset": config.data.name,
               "command": command_line(), "backbone": backbone(config),
               "init_from": config.get("init_from"),
               "teacher_from": config.get("teacher_from"),
               "label_fraction": float(config.data.get("label_fraction", 1.0)),
               "steps": int(config.train.steps), "batch_size": int(config.train.batch_size),
               "train_wall_s": train_time, "hardware": hardware(),
               "date": time.strftime("%Y-%m-%d"), "results": []}
    if mode == "eval":
        summary.update(eval_only_fields(Path(workdir), int(state.step)))
    if mode in ("eval", "train_eval") and "eval" in config:
        # A method with its own protocols (text, speech, image-text) defines ``evaluate``.
        evaluate_fn = getattr(method, "evaluate", None)
        summary["results"], n_train = (
            evaluate_fn(state, Path(workdir)) if evaluate_fn is not None
            else evaluate(config, state, method, Path(workdir)))
        summary["train_examples"] = round(n_train * summary["label_fraction"])
        summary["epochs"] = summary["steps"] * summary["batch_size"] / summary["train_examples"]
        summary["total_wall_s"] = time.perf_counter() - t0
    # Other work on a shared machine inflates wall times: record the 1-minute load average.
    summary["eval_load_avg_1m" if mode == "eval" else "load_avg_1m"] = round(
        os.getloadavg()[0], 2)
    if jax.process_index() == 0:
        Path(workdir, "results.json").write_text(json.dumps(summary, indent=1))
        plot_curves(Path(workdir, "metrics.jsonl"), Path(workdir, "curves.png"))
        print(format_results(summary))
    return summary


def eval_only_fields(workdir: Path, step: int) -> dict:
    """What ``jssl eval`` records instead of a training run's fields: the checkpoint's step
    (a run stopped early is evaluated, and reported, at the step it reached), and the
    training command, time, hardware and date of the ``results.json`` it replaces (restoring
    is not training), with this evaluation's own command and date beside them."""
    fields = {"steps": step, "train_wall_s": None, "eval_command": command_line(),
              "eval_hardware": hardware(), "eval_date": time.strftime("%Y-%m-%d")}
    previous = workdir / "results.json"
    if previous.exists():
        try:
            before = json.loads(previous.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s): its training time is not carried over", previous, e)
            before = {}
        fields.update({k: before[k] for k in ("command", "train_wall_s", "hardware", "date",
                                                   "load_avg_1m")
                       if k in before and before.get("steps") == step})
    return fields


def format_results(summary: dict) -> str:
    wall = summary.get("train_wall_s")
    lines = [f"{summary['method']} · {summary['steps']} steps × batch {summary['batch_size']} · "
             + (f"train {wall:.0f} s" if wall is not None else "evaluated, not trained here")
             + f" · {summary['hardware']}"]
    for r in summary["results"]:
        number = (f"{100 * r['accuracy']:6.2f} %" if "accuracy" in r
                  else f"{r['value']:8.2f}")  # e.g. a perplexity
        lines.append(f"  {r['protocol']:34s} {number}")
    if summary.get("dataset") == "fashion_mnist_local" and summary["results"]:
        from jssl.evaluate.results_doc import load_baselines

        base = load_baselines()  # bench/baselines.json (python bench/baselines.py)
        for (kind, frac), acc in sorted(base.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            name = ("raw pixels: kNN (k=20)" if kind == "knn20"
                    else f"raw pixels: logistic regr. ({frac:.0%})")
            lines.append(f"  {name:34s} {100 * acc:6.2f} %   (baseline)")
    return "\n".join(lines)
