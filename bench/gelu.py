"""Benchmark: jssl's exact GELU (erf form) against ``jax.nn.gelu(approximate=False)`` (erfc
form) in the CPU presets that use it, and alone.

    .venv/bin/python bench/gelu.py
    .venv/bin/python bench/gelu.py --only mae:fashion_mnist --repeats 21

Both forms compute x·Φ(x) (``jssl.models.activations``). In one process, per preset, the
update is built twice as ``bench/compare.py`` builds it: with jssl's GELU, and with the
``gelu`` name in every jssl model module pointed at the erfc form. The two updates then
alternate, the order flipping every repeat, so machine load hits both; each gets the median
of ``--repeats`` timings, the ratio is erf / erfc (< 1: jssl's form is faster). The GELU
alone (forward, and forward + backward) on a [4352, 512] float32 array (MAE's decoder MLP
at batch 256) is timed the same way. Writes ``bench/gelu.json`` (rendered by
``python bench/render.py`` into docs/performance.md). Runs under tcmalloc, as jssl's CLI.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("mae:fashion_mnist", "bert:fortunes", "clip:fashion_mnist")
#: every jssl module that binds the name ``gelu`` (and the transformer's activation table)
MODULES = ("jssl.models.transformer", "jssl.models.bert", "jssl.models.heads",
           "jssl.models.vit", "jssl.models.wav2vec2")


def _erfc_gelu(x):
    import jax

    return jax.nn.gelu(x, approximate=False)


def _use(fn) -> None:
    """Point every jssl model module's ``gelu`` at ``fn`` (the next build traces it)."""
    import importlib

    for name in MODULES:
        module = importlib.import_module(name)
        module.gelu = fn
        if hasattr(module, "_ACTIVATIONS"):
            module._ACTIVATIONS["gelu"] = fn


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.preset_args import parse

    args = parse(__doc__, PRESETS, __file__)
    import jax
    import jax.numpy as jnp

    from bench.baselines import write_report
    from bench.compare import alternate_jitted, alternate_updates
    from jssl.models.activations import gelu

    forms = {"erf": gelu, "erfc": _erfc_gelu}
    x = jax.random.normal(jax.random.key(0), (4352, 512), jnp.float32) * 2
    alone = {}
    for part, wrap in (("forward", lambda f: f),
                       ("forward+backward", lambda f: jax.grad(lambda x: jnp.sum(f(x) * x)))):
        med = alternate_jitted({k: wrap(f) for k, f in forms.items()}, (x,), 5 * args.repeats)
        alone[part] = {"median_s": med, "ratio_erf_erfc": round(med["erf"] / med["erfc"], 3)}
        print(f"gelu alone, {part}: erf {med['erf'] * 1e3:.2f} ms, erfc "
              f"{med['erfc'] * 1e3:.2f} ms", flush=True)
    results = []
    for spec in args.only.split(","):
        med = alternate_updates(spec, {form: functools.partial(_use, fn)
                                       for form, fn in forms.items()}, args.repeats)
        _use(gelu)
        row = {"preset": spec, "median_s": med,
               "ratio_erf_erfc": round(med["erf"] / med["erfc"], 3),
               "load": round(os.getloadavg()[0], 2)}
        print(f"{spec:22s} update: erf {med['erf'] * 1e3:.0f} ms, erfc {med['erfc'] * 1e3:.0f} ms"
              f": {row['ratio_erf_erfc']:.3f} (load {row['load']})", flush=True)
        results.append(row)
    write_report(args.out, "gelu.py", args, alone=alone, results=results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()  # jssl's CLI runs with tcmalloc on CPU; so do the updates here
    main()
