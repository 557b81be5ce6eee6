"""Benchmark: jssl's Dropout and argmax-accuracy metric against ``flax.linen.Dropout`` and
``jnp.argmax`` in the CPU text presets, and each alone.

    .venv/bin/python bench/text_ops.py
    .venv/bin/python bench/text_ops.py --only bert:fortunes --repeats 21

Both of jssl's versions give the same numbers as the ones they replace (tested):
``jssl.models.dropout.Dropout`` draws ``nn.Dropout``'s mask bit for bit with Threefry
unrolled, ``jssl.losses.prediction.argmax_equals`` is ``argmax(logits, -1) == labels``
written with a max and a sum. In one process, per preset, the update is built four times as
``bench/compare.py`` builds it: jssl's, with ``nn.Dropout`` in every jssl model module
(the ``Dropout`` name pointed at it), with ``jnp.argmax`` in the text methods, and with both
old versions. The updates then alternate, the order reversing every repeat, so machine load
hits all; each gets the median of ``--repeats`` timings; the ratios are jssl / old (< 1:
jssl's is faster). Alone, timed the same way: the keep mask (``keep_mask`` against
``jax.random.bernoulli``) at the two dropout shapes of ``bert:fortunes`` (hidden
[64, 64, 128], attention probabilities [64, 4, 64, 64]) and the accuracy at its MLM logits
([64, 20, 4000]). Writes ``bench/text_ops.json`` (rendered by ``python bench/render.py``
into docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("bert:fortunes", "gpt:fortunes", "simcse:fortunes")
#: every jssl module that binds the name ``Dropout``
DROPOUT_MODULES = ("jssl.models.transformer", "jssl.models.bert", "jssl.models.gpt",
                   "jssl.models.t5", "jssl.models.vit", "jssl.models.wav2vec2")
#: every jssl module that binds the name ``argmax_equals``
ARGMAX_MODULES = ("jssl.methods.bert", "jssl.methods.gpt", "jssl.methods.t5",
                  "jssl.methods.beit")
MASK_SHAPES = {"hidden": (64, 64, 128), "attention": (64, 4, 64, 64)}
LOGITS_SHAPE = (64, 20, 4000)


def _jnp_argmax_equals(logits, labels):
    import jax.numpy as jnp

    return jnp.argmax(logits, -1) == labels


def _use(dropout, argmax_equals) -> None:
    """Point the jssl modules' ``Dropout`` and ``argmax_equals`` names (the next build
    traces them)."""
    for name in DROPOUT_MODULES:
        importlib.import_module(name).Dropout = dropout
    for name in ARGMAX_MODULES:
        importlib.import_module(name).argmax_equals = argmax_equals


def _alone(fns: dict, args: tuple, rounds: int) -> dict:
    from bench.compare import alternate_jitted

    med = alternate_jitted(fns, args, rounds)
    return {"median_s": med, "ratio_jssl_old": round(med["jssl"] / med["old"], 3)}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.preset_args import parse

    args = parse(__doc__, PRESETS, __file__)
    import flax.linen as nn
    import jax

    from bench.baselines import write_report
    from bench.compare import alternate_updates
    from jssl.losses.prediction import argmax_equals
    from jssl.models.dropout import Dropout, keep_mask

    key = jax.random.key(0)
    alone = {}
    for part, shape in MASK_SHAPES.items():
        alone[f"dropout mask {part}"] = {"shape": list(shape), **_alone(
            {"jssl": lambda k, s=shape: keep_mask(k, 0.9, s),
             "old": lambda k, s=shape: jax.random.bernoulli(k, 0.9, s)},
            (key,), 5 * args.repeats)}
    logits = jax.random.normal(key, LOGITS_SHAPE)
    labels = jax.random.randint(key, LOGITS_SHAPE[:-1], 0, LOGITS_SHAPE[-1])
    alone["accuracy metric"] = {"shape": list(LOGITS_SHAPE), **_alone(
        {"jssl": lambda x, y: argmax_equals(x, y).mean(),
         "old": lambda x, y: _jnp_argmax_equals(x, y).mean()}, (logits, labels),
        5 * args.repeats)}
    for part, row in alone.items():
        med = row["median_s"]
        print(f"{part} {row['shape']}: jssl {med['jssl'] * 1e3:.2f} ms, old "
              f"{med['old'] * 1e3:.2f} ms", flush=True)
    variants = {"jssl": (Dropout, argmax_equals), "nn.Dropout": (nn.Dropout, argmax_equals),
                "jnp.argmax": (Dropout, _jnp_argmax_equals),
                "old": (nn.Dropout, _jnp_argmax_equals)}
    results = []
    for spec in args.only.split(","):
        med = alternate_updates(spec, {name: functools.partial(_use, *parts)
                                       for name, parts in variants.items()}, args.repeats)
        _use(Dropout, argmax_equals)
        row = {"preset": spec, "median_s": med,
               "ratios": {k: round(med["jssl"] / med[k], 3) for k in variants if k != "jssl"},
               "load": round(os.getloadavg()[0], 2)}
        print(f"{spec:18s} update: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in med.items())
              + f" (load {row['load']})", flush=True)
        results.append(row)
    write_report(args.out, "text_ops.py", args, alone=alone, results=results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so do the updates here
    main()
