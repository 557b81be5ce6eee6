"""Checkpoints: Orbax ``CheckpointManager`` over ``workdir/checkpoints``.

One checkpoint step directory holds three items:

* ``state``: the train-state pytree (params, opt_state, method state such as
  the EMA teacher, queue or center, step, PRNG key), written with Orbax's
  ``StandardSave`` (OCDBT/Zarr, each process writes its own shards). Typed
  PRNG keys are stored as ``jax.random.key_data`` and rewrapped on restore.
* ``data``: the input pipeline's iterator state, one JSON file per process
  (grain's Orbax handler): a grain ``DataLoader``/``Dataset`` iterator, a
  JSON-able dict, or bytes. Restored by a different number of processes, each
  process reads process 0's file (jssl's loader states are process-independent).
* ``meta``: JSON written by the primary process: step, wall time, the paths
  and implementations of the PRNG keys, and anything the caller adds.

Atomicity comes from Orbax: a step is written into
``<step>.orbax-checkpoint-tmp-<timestamp>/`` and renamed to ``<step>/`` only
once every item is complete (a ``commit_success.txt`` marker on object stores),
so an interrupted save never shows up as the latest step. Saves are
asynchronous: ``save`` returns once the arrays are copied off the devices;
``wait()`` blocks until the files are committed.

``restore`` with ``target`` (concrete arrays or ``jax.ShapeDtypeStruct``s
carrying shardings) places every array with the *target's* sharding, so a
checkpoint written on one mesh restores onto another. If the newest step cannot
be read (a truncated or missing file), it warns, naming the step, and falls back
to the one before; the bad directory is kept, and moved aside to
``<step>.corrupt-<time>`` only when that step is saved again.

Multi-process: every process must call ``save``/``restore`` (Orbax's collective
protocol). The fall-back decision is taken by each process from what it reads;
on a shared file system all processes see the same damage and agree.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import threading
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from grain import checkpoint as grain_ckpt

from jssl.train.optim import path_str


class _StateBox:
    """Adapts a JSON-able dict or bytes to grain's iterator-state protocol."""

    def __init__(self, state: Any = None):
        self.state = state

    def get_state(self) -> bytes:
        if isinstance(self.state, bytes):
            return self.state
        return json.dumps(self.state, sort_keys=True).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode())

    def start_prefetch(self) -> None:
        pass


@dataclasses.dataclass
class Restored:
    """What ``Checkpointer.restore`` returns."""

    step: int
    state: Any
    data_state: Any  # the restored iterator, the JSON state, or None if none was saved
    metadata: dict


def _collect_failed_reads() -> None:
    """Collect the sibling read tasks of a failed restore now, without asyncio's
    "Task exception was never retrieved" log for each (the failure is reported once)."""
    log = logging.getLogger("asyncio")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        gc.collect()
    finally:
        log.setLevel(level)


def _restore_foreign_data_state(data_dir: epath.Path, box: Any) -> None:
    """Set process 0's state of another process count (jssl's is the same on every process;
    a plain grain iterator's ``set_state`` rejects another shard's state)."""
    box.set_state(sorted(data_dir.glob("process_*-of-*.json"))[0].read_text().encode())


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> tuple[Any, dict[str, str]]:
    """Replace typed PRNG keys by their raw ``key_data``; return ``{path: impl}``."""
    impls: dict[str, str] = {}

    def conv(path, x):
        if _is_key(x):
            impls[path_str(path)] = str(jax.random.key_impl(x))
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map_with_path(conv, tree), impls


def _abstract(x: Any) -> Any:
    """Restore target for one leaf: shape, dtype and sharding (keys as their key data)."""
    if _is_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


class Checkpointer:
    """Save/restore train state + data-iterator state + metadata under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | epath.Path, *, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1, async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} must be >= 1 (or None to keep all)")
        if "://" not in str(workdir):  # Orbax/TensorStore need absolute local paths
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain_ckpt.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
        self._bad_steps: set[int] = set()
        self.preemption: PreemptionFlag | None = None

    # -- saving ------------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: Any = None, *, force: bool = False,
             metadata: dict | None = None) -> bool:
        """Start saving ``step``; returns whether a save was started (interval/force)."""
        step = int(step)
        if step in self._bad_steps and step in self.all_steps():
            self._move_aside(step)
        raw, key_impls = _keys_to_data(state)
        meta = {**(metadata or {}), "step": step, "wall_time": time.time(),
                "prng_keys": key_impls}
        items = {"state": ocp.args.StandardSave(raw), "meta": ocp.args.JsonSave(meta)}
        if data_state is not None:
            it = data_state if hasattr(data_state, "get_state") else _StateBox(data_state)
            items["data"] = grain_ckpt.CheckpointSave(it)
        return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

    def _move_aside(self, step: int) -> None:
        self.wait()
        src = self.directory / str(step)
        dst = self.directory / f"{step}.corrupt-{int(time.time())}"
        if jax.process_index() == 0:
            src.rename(dst)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"jssl_move_aside_{step}")
        warnings.warn(f"moved unreadable checkpoint step {step} aside to {dst}", stacklevel=3)
        self._bad_steps.discard(step)
        self._mngr.reload()

    # -- queries -----------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Committed (finalized) steps, oldest first."""
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """Newest committed step, or ``None``."""
        return self._mngr.latest_step()

    # -- restoring ---------------------------------------------------------------------------
    def restore(self, step: int | None = None, target: Any = None,
                data_iterator: Any = None) -> Restored | None:
        """Restore ``step`` (default: newest readable) onto ``target``'s shapes and shardings.

        ``target`` is a pytree of arrays or ``ShapeDtypeStruct``s (with shardings) like the
        saved state; ``None`` restores as saved (onto this process's first device when another
        number of processes saved it). ``data_iterator`` (grain iterator) gets the
        saved iterator state set in place; without it the JSON/bytes state is returned.
        Returns ``None`` when there is no checkpoint. An explicitly requested ``step`` that
        cannot be read raises; the default falls back to older steps with a warning.
        """
        self.wait()
        steps = [int(step)] if step is not None else self.all_steps()[::-1]
        if not steps:
            return None
        errors = []
        for s in steps:
            try:
                return self._restore_step(s, target, data_iterator)
            except Exception as e:  # noqa: BLE001 - any read failure means an unusable step
                _collect_failed_reads()
                if step is not None:
                    raise
                self._bad_steps.add(s)
                errors.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
                warnings.warn(
                    f"checkpoint step {s} in {self.directory} cannot be restored "
                    f"({type(e).__name__}: {str(e)[:200]}); falling back to an older step",
                    stacklevel=2)
        raise RuntimeError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))

    def _restore_step(self, step: int, target: Any, data_iterator: Any) -> Restored:
        step_dir = self.directory / str(step)
        meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        has_data = (data_dir := step_dir / "data").exists()
        box = data_iterator if data_iterator is not None else _StateBox()
        own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if target is None and has_data and not own.exists():  # saved on another topology
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                  self._mngr.item_metadata(step)["state"].tree)
        items = {"state": ocp.args.StandardRestore(
            None if target is None else jax.tree.map(_abstract, target))}
        if has_data and own.exists():
            items["data"] = grain_ckpt.CheckpointRestore(box)
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        if has_data and not own.exists():  # written by another number of processes
            _restore_foreign_data_state(data_dir, box)
        impls = meta.get("prng_keys", {})

        def rewrap(path, x):
            impl = impls.get(path_str(path))
            return x if impl is None else jax.random.wrap_key_data(x, impl=impl)

        state = jax.tree_util.tree_map_with_path(rewrap, out.state)
        data_state = None
        if has_data:
            data_state = data_iterator if data_iterator is not None else box.state
        return Restored(step=step, state=state, data_state=data_state, metadata=dict(meta))

    # -- lifecycle and preemption ------------------------------------------------------------
    def reached_preemption(self, step: int) -> bool:
        """True once a SIGTERM was caught (see ``install_sigterm_handler``) or Orbax/JAX's
        multi-host preemption notice says all processes should save at ``step``."""
        flagged = self.preemption is not None and self.preemption.is_set()
        return flagged or bool(self._mngr.reached_preemption(int(step)))

    def wait(self) -> None:
        """Block until every started save is committed to disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager's threads."""
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PreemptionFlag:
    """Set by a signal handler; the training loop polls it and saves before exiting."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int | None = None) -> None:
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:
        return self.is_set()


def install_sigterm_handler(
    signals: tuple[int, ...] = (signal.SIGTERM,), checkpointer: Checkpointer | None = None
) -> PreemptionFlag:
    """Catch ``signals`` (default SIGTERM) and set a flag instead of dying.

    The loop checks ``flag.is_set()`` (or ``checkpointer.reached_preemption(step)``)
    each step, saves with ``force=True``, waits and exits. Call from the main thread.
    """
    flag = PreemptionFlag()
    for sig in signals:
        signal.signal(sig, lambda signum, frame: flag.set(signum))
    if checkpointer is not None:
        checkpointer.preemption = flag
    return flag
