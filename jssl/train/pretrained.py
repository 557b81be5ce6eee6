"""Start a run from another run's encoder (fine-tuning, transfer).

Every method keeps its backbone under the top-level name ``encoder`` in ``params`` (and in
``batch_stats`` when it has BatchNorm), so an SSL run's encoder can seed any other method
with the same ``config.model.encoder``:

    python -m jssl.main --config=experiments/supervised.py:finetune_10pct \
        --config.init_from=runs/simclr_fmnist --workdir=runs/finetune_10pct

Only the encoder is copied; the rest of the new state (heads, optimizer, step, RNG) stays
as initialised. A run that already has its own checkpoint resumes from it instead.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jssl.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)

PART = "encoder"


def _field(saved: Any, name: str) -> Any:
    return saved[name] if isinstance(saved, Mapping) else getattr(saved, name)


def copy_tree(current: Any, saved: Any, what: str, source: str,
              flag: str = "config.init_from") -> Any:
    """``saved`` in ``current``'s dtypes and shardings, after checking that both trees have
    the same paths and shapes (errors name ``flag``, ``source`` and the first mismatch)."""
    cur_paths = {jax.tree_util.keystr(p): x
                 for p, x in jax.tree_util.tree_leaves_with_path(current)}
    new_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(saved)}
    if cur_paths.keys() != new_paths.keys():
        missing = sorted(cur_paths.keys() - new_paths.keys())[:3]
        extra = sorted(new_paths.keys() - cur_paths.keys())[:3]
        raise ValueError(f"{flag}={source!r}: the saved {what} do not match "
                         f"config.model.encoder (missing {missing}, unexpected {extra}); use the "
                         f"same encoder config as that run")
    for path, x in cur_paths.items():
        if tuple(np.shape(new_paths[path])) != tuple(x.shape):
            raise ValueError(f"{flag}={source!r}: {what}{path} has shape "
                             f"{np.shape(new_paths[path])}, the new model {x.shape}; use the "
                             f"same encoder config as that run")

    def put(path, x):
        y = new_paths[jax.tree_util.keystr(path)]
        return jax.device_put(np.asarray(jax.device_get(y), dtype=x.dtype), x.sharding)

    return jax.tree_util.tree_map_with_path(put, current)


def _replace_part(current: Any, saved: Any, what: str, source: str) -> Any:
    """``current`` with its ``PART`` subtree replaced by ``saved``'s, same shapes and shardings."""
    if not isinstance(saved, Mapping) or PART not in saved:
        raise ValueError(f"config.init_from={source!r}: its {what} have no {PART!r} entry "
                         f"(found {sorted(saved) if isinstance(saved, Mapping) else saved!r}); "
                         f"point it at a jssl run of a method with an encoder")
    return {**current, PART: copy_tree(current[PART], saved[PART], f"{what}[{PART!r}]", source)}


def restore_run(source: str, flag: str = "config.init_from",
                fix: str = "run the pretraining there first") -> Any:
    """The newest readable checkpoint of the jssl workdir ``source`` (``flag`` and ``fix``
    word the errors: not a directory, no checkpoint)."""
    if not os.path.isdir(source):
        raise FileNotFoundError(f"{flag}={source!r} is not a directory; {fix}")
    with Checkpointer(source, async_save=False) as ckpt:
        restored = ckpt.restore()
    if restored is None:
        raise FileNotFoundError(f"{flag}={source!r} holds no checkpoint; {fix}")
    return restored


def saved_params(restored: Any) -> Any:
    """``params`` of a restored checkpoint's state (a dict or a ``TrainState``)."""
    return _field(restored.state, "params")


def saved_variables(restored: Any) -> Any:
    """The non-param ``variables`` (BatchNorm statistics) of a restored checkpoint's state."""
    return _field(restored.state, "variables")


def load_pretrained_encoder(state: Any, source: str | os.PathLike) -> Any:
    """``state`` (a ``TrainState``) with params/batch_stats ``["encoder"]`` from ``source``,
    a jssl workdir (its newest readable checkpoint)."""
    source = str(source)
    restored = restore_run(source)
    saved = restored.state
    params = _replace_part(state.params, _field(saved, "params"), "params", source)
    variables = dict(state.variables)
    if "batch_stats" in variables and PART in variables["batch_stats"]:
        saved_vars = _field(saved, "variables")
        variables["batch_stats"] = _replace_part(variables["batch_stats"],
                                                 saved_vars.get("batch_stats", {}),
                                                 "batch_stats", source)
    log.info("encoder initialised from %s (step %d)", source, restored.step)
    return state.replace(params=params, variables=variables)
