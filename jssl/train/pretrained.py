"""Start a run from another run's encoder (fine-tuning, transfer).

Every method keeps its backbone under the top-level name ``encoder`` in ``params`` (and in
``batch_stats`` when it has BatchNorm), so an SSL run's encoder can seed any other method
with the same ``config.model.encoder``:

    python -m jssl.main --config=experiments/supervised.py:finetune_10pct \
        --config.init_from=runs/simclr_fmnist --workdir=runs/finetune_10pct

Only the encoder is copied, and, when the new model keeps the first blocks of a projection
head under ``projector`` (SimCLRv2's fine-tuning from the middle of the head,
``--config.model.projector.keep_hidden``), those blocks of the run's projector; the rest of
the new state (classifier, optimizer, step, RNG) stays as initialised. A run that already
has its own checkpoint resumes from it instead.
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
#: copied too when the new model has it: the kept hidden blocks of a projection head
HEAD = "projector"


def _field(saved: Any, name: str) -> Any:
    return saved[name] if isinstance(saved, Mapping) else getattr(saved, name)


def copy_tree(current: Any, saved: Any, what: str, source: str,
              flag: str = "config.init_from", model_key: str = "encoder") -> Any:
    """``saved`` in ``current``'s dtypes and shardings, after checking that both trees have
    the same paths and shapes (errors name ``flag``, ``source`` and the first mismatch)."""
    cur_paths = {jax.tree_util.keystr(p): x
                 for p, x in jax.tree_util.tree_leaves_with_path(current)}
    new_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(saved)}
    if cur_paths.keys() != new_paths.keys():
        missing = sorted(cur_paths.keys() - new_paths.keys())[:3]
        extra = sorted(new_paths.keys() - cur_paths.keys())[:3]
        raise ValueError(f"{flag}={source!r}: the saved {what} do not match "
                         f"config.model.{model_key} (missing {missing}, unexpected {extra}); use "
                         f"the same {model_key} config as that run")
    for path, x in cur_paths.items():
        if tuple(np.shape(new_paths[path])) != tuple(x.shape):
            raise ValueError(f"{flag}={source!r}: {what}{path} has shape "
                             f"{np.shape(new_paths[path])}, the new model {x.shape}; use the "
                             f"same {model_key} config as that run")

    def put(path, x):
        y = new_paths[jax.tree_util.keystr(path)]
        return jax.device_put(np.asarray(jax.device_get(y), dtype=x.dtype), x.sharding)

    return jax.tree_util.tree_map_with_path(put, current)


def _replace_part(current: Any, saved: Any, what: str, source: str, part: str = PART) -> Any:
    """``current`` with its ``part`` subtree replaced by ``saved``'s, same shapes and
    shardings; for the ``HEAD``, only the blocks ``current`` keeps are read."""
    if not isinstance(saved, Mapping) or part not in saved:
        raise ValueError(f"config.init_from={source!r}: its {what} have no {part!r} entry "
                         f"(found {sorted(saved) if isinstance(saved, Mapping) else saved!r}); "
                         f"point it at a jssl run of a method with an encoder"
                         + (" and a projection head" if part == HEAD else ""))
    mine = saved[part]
    if part == HEAD and isinstance(mine, Mapping):
        mine = {k: v for k, v in mine.items() if k in current[part]}
    return {**current, part: copy_tree(current[part], mine, f"{what}[{part!r}]", source,
                                       model_key=part)}


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
    """``state`` (a ``TrainState``) with params/batch_stats ``["encoder"]`` (and the kept
    blocks of ``["projector"]``) from ``source``, a jssl workdir (its newest readable
    checkpoint)."""
    source = str(source)
    restored = restore_run(source)
    saved = restored.state
    params, variables = state.params, dict(state.variables)
    for part in (PART, HEAD):
        if part == HEAD and part not in params:
            continue
        params = _replace_part(params, _field(saved, "params"), "params", source, part)
        if "batch_stats" in variables and part in variables["batch_stats"]:
            saved_vars = _field(saved, "variables")
            variables["batch_stats"] = _replace_part(variables["batch_stats"],
                                                     saved_vars.get("batch_stats", {}),
                                                     "batch_stats", source, part)
    log.info("encoder%s initialised from %s (step %d)",
             " and projector blocks" if HEAD in params else "", source, restored.step)
    return state.replace(params=params, variables=variables)
