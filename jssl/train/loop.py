"""The training loop: mesh → data → method → optimizer → state → steps, with
checkpoints, logging, preemption and NaN handling.

The same code runs on one CPU, on 8 simulated devices and on a pod: the batch is
a global array split over the mesh's batch axes; every process feeds only its
own shard (``make_array_from_process_local_data``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jssl.data.inputs import train_loader
from jssl.data.pipeline import to_global_batch
from jssl.methods import get_method
from jssl.train.checkpoint import Checkpointer, install_sigterm_handler
from jssl.train.mesh import check_global_batch, make_mesh
from jssl.train.metrics import MetricsWriter, ProgressBar, check_finite, write_config
from jssl.train.optim import make_optimizer
from jssl.train.pretrained import load_pretrained_encoder
from jssl.train.state import TrainState, batch_spec, create_state, make_train_step

log = logging.getLogger(__name__)


def check_workdir(workdir: str | os.PathLike) -> Path:
    """Create ``workdir`` and prove it writable with a probe file of a unique name: every
    process of a multi-process run probes the same directory at once, so a shared name would
    let one process delete another's probe."""
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test."):
            pass
    except OSError as e:
        raise ValueError(f"--workdir={workdir} is not writable ({e.strerror}); pass a directory "
                         f"you can write to") from e
    return path


def validate(config: Any, mesh) -> None:
    """Config errors that must surface before anything compiles."""
    check_global_batch(config.train.batch_size, mesh)
    accum = config.train.get("grad_accum_steps", 1)
    if accum != 1:
        raise ValueError(
            f"config.train.grad_accum_steps={accum}: gradient accumulation would shrink the "
            f"negatives of the contrastive loss to one micro-batch; use a smaller model or more "
            f"devices and keep grad_accum_steps=1")
    if not config.train.steps > 0:
        raise ValueError(f"config.train.steps={config.train.steps} must be > 0")


def train(config: Any, workdir: str | os.PathLike, *,
          restore_only: bool = False) -> tuple[TrainState, Any]:
    """Train (or resume) ``config`` in ``workdir``; returns (final state, method).

    ``restore_only``: load the newest checkpoint and return it without training (``jssl
    eval``); a workdir without a checkpoint is an error.
    """
    workdir = check_workdir(workdir)
    mesh = make_mesh(config)
    method = get_method(config.method)(config, mesh)
    validate(config, mesh)
    if config.get("init_required") and not config.get("init_from"):
        raise ValueError(f"config.init_from={config.get('init_from')!r}: the {config.name!r} "
                         f"preset fine-tunes an SSL run; pass --config.init_from=RUN_WORKDIR")
    total = int(config.train.steps)
    tx, schedule, info = make_optimizer(config.optim, global_batch=config.train.batch_size,
                                        total_steps=total)
    log.info("optimizer %s", info)
    loader = train_loader(config)
    iterator = iter(loader)
    sample = next(iter(loader))  # shapes only; the training iterator is untouched
    sample = {k: np.zeros((config.train.batch_size, *v.shape[1:]), v.dtype)
              for k, v in sample.items()}
    state, shardings = create_state(method, tx, jax.random.key(config.seed), sample, mesh)
    if config.get("init_from"):  # fine-tuning: the encoder of another run
        state = load_pretrained_encoder(state, config.init_from)
    state = method.load_frozen(state)  # e.g. a distillation teacher from another run
    step_fn = make_train_step(method, tx, mesh, shardings)

    ckpt_cfg = config.get("checkpoint", {})
    ckpt = Checkpointer(workdir, max_to_keep=ckpt_cfg.get("keep", 3),
                        async_save=ckpt_cfg.get("async_save", True))
    restored = ckpt.restore(target=state, data_iterator=iterator)
    if restored is not None:
        state = restored.state
        log.info("resumed from step %d in %s", restored.step, workdir)
    start = int(jax.device_get(state.step))
    if restore_only:
        ckpt.close()
        if restored is None:
            raise FileNotFoundError(f"--workdir={str(workdir)!r} holds no checkpoint to evaluate; "
                                    f"train first (jssl train / --mode=train_eval)")
        return state, method
    preempted = install_sigterm_handler(checkpointer=ckpt)
    write_config(workdir, config)
    every = config.train.get("log_every", 50)
    save_every = ckpt_cfg.get("every", 1000)
    spec = batch_spec(mesh)
    with MetricsWriter(workdir, resume_step=start) as writer:
        bar = ProgressBar(total, global_batch=config.train.batch_size, start_step=start,
                          every=every)
        for step in range(start, total):
            batch = to_global_batch(next(iterator), mesh, spec)
            state, metrics = step_fn(state, batch)
            done = step + 1
            if done % every == 0 or done == total:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(scalars["loss"], done, ckpt.latest_step())
                scalars["lr"] = float(schedule(step))
                writer.write_scalars(done, scalars)
                bar.update(done, **scalars)
            if done % save_every == 0 or done == total or preempted:
                ckpt.save(done, state, iterator, force=True)
            if preempted:
                log.warning("preempted (signal %s) at step %d: saved, exiting", preempted.signum,
                            done)
                break
        bar.close()
    ckpt.close()
    if preempted:  # saved: stop here, with no evaluation of a half-trained model
        raise SystemExit(f"preempted (signal {preempted.signum}) at step {done}: checkpoint "
                         f"saved in {workdir}; run the same command to resume")
    return state, method
