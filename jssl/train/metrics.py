"""Metrics out of the training loop: ``metrics.jsonl``, TensorBoard, console, NaN stop.

* ``MetricsWriter(workdir)``: each ``write_scalars(step, {...})`` appends one JSON
  object ``{"step", "time", **metrics}`` to ``workdir/metrics.jsonl`` (flushed,
  so a crash loses nothing already written) and, when ``tensorboardX`` is
  installed, the same scalars to TensorBoard event files in ``workdir/tb``.
  Only process 0 writes; on other processes it is a no-op. ``MetricsWriter(workdir,
  resume_step=k)`` first drops the records of steps > k, which a run stopped after its
  last checkpoint at step k wrote and the resumed run writes again.
* ``write_config(workdir, config)``: ``workdir/config.json``.
* ``ProgressBar``: step/total, steps/s, examples/s, loss, ETA; a ``\\r``-updated
  line on a terminal, one plain line every ``every`` steps otherwise (logs).
* ``check_finite(loss, step, last_ckpt_step)``: ``FloatingPointError`` naming the
  step and the checkpoint to resume from.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np


def _to_float(name: str, value: Any) -> float:
    arr = np.asarray(jax.device_get(value))
    if arr.size != 1:
        raise ValueError(f"metric {name!r} has shape {arr.shape}; log scalars only (reduce it)")
    return float(arr.reshape(()))


class MetricsWriter:
    """Append scalars to ``metrics.jsonl`` and TensorBoard (``tensorboardX``, if installed)."""

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
                 enabled: bool | None = None, resume_step: int | None = None):
        self.workdir = Path(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = self.workdir / "metrics.jsonl"
        self._file: TextIO | None = None
        self._tb = None
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            _drop_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                logging.warning("tensorboardX is not installed: writing metrics.jsonl only "
                                "(pip install tensorboardX for TensorBoard event files)")
            else:
                self._tb = SummaryWriter(str(self.workdir / "tb"), flush_secs=30)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> dict[str, Any]:
        """Log ``scalars`` (numbers or 1-element arrays) at ``step``; returns the JSON record."""
        values = {k: _to_float(k, v) for k, v in scalars.items()}
        record = {"step": int(step), "time": time.time(), **values}
        if not self.enabled:
            return record
        # NaN/inf are written as JSON's NaN/Infinity (Python's json reads them back).
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step), walltime=record["time"])
        return record

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_after(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically: temp file + rename) without records of steps > ``step``."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash
        if int(record.get("step", 0)) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a torn last line from a crash is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_config(workdir: str | os.PathLike, config: Any) -> Path:
    """Write ``config`` (ConfigDict or mapping) to ``workdir/config.json``; returns the path."""
    path = Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(config, "to_json_best_effort"):
        text = config.to_json_best_effort(indent=2, sort_keys=True)
    else:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
    if jax.process_index() == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)  # atomic: never a half-written config.json
    return path


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressBar:
    """Console progress: ``step 120/1000 (12.0%) | 3.2 steps/s | 822 ex/s | loss 4.12 | ETA 4m34s``.

    Rates are measured between successive ``update`` calls (so compilation of the
    first step does not skew them after the first report).
    """

    def __init__(self, total_steps: int, *, global_batch: int, start_step: int = 0,
                 every: int = 100, stream: TextIO | None = None, is_tty: bool | None = None,
                 clock=time.monotonic):
        self.total = int(total_steps)
        self.global_batch = int(global_batch)
        self.every = max(1, int(every))
        self.stream = sys.stdout if stream is None else stream
        self.is_tty = self.stream.isatty() if is_tty is None else is_tty
        self.enabled = jax.process_index() == 0
        self._clock = clock
        self._last_step = int(start_step)
        self._last_time = clock()
        self._rate = float("nan")

    def format(self, step: int, scalars: Mapping[str, Any]) -> str:
        pct = 100.0 * step / max(self.total, 1)
        parts = [f"step {step}/{self.total} ({pct:.1f}%)",
                 f"{self._rate:.2f} steps/s", f"{self._rate * self.global_batch:.0f} ex/s"]
        parts += [f"{k} {_to_float(k, v):.4g}" for k, v in scalars.items()]
        parts.append(f"ETA {_fmt_duration((self.total - step) / self._rate)}")
        return " | ".join(parts)

    def update(self, step: int, **scalars: Any) -> str | None:
        """Report ``step``; returns the line written, or ``None`` if nothing was written."""
        step = int(step)
        due = self.is_tty or step % self.every == 0 or step >= self.total
        if not due or not self.enabled:
            return None
        now = self._clock()
        if step > self._last_step and now > self._last_time:
            self._rate = (step - self._last_step) / (now - self._last_time)
            self._last_step, self._last_time = step, now
        line = self.format(step, scalars)
        if self.is_tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def close(self) -> None:
        if self.is_tty and self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def check_finite(loss: Any, step: int, last_ckpt_step: int | None) -> None:
    """Raise ``FloatingPointError`` if ``loss`` has a NaN or inf (fetches it to the host)."""
    value = np.asarray(jax.device_get(loss))
    if np.all(np.isfinite(value)):
        return
    resume = (f"the last good checkpoint is step {last_ckpt_step}; rerun with the same "
              "--workdir to resume from it" if last_ckpt_step is not None
              else "no checkpoint was saved yet")
    raise FloatingPointError(
        f"loss is {value.tolist()} (not finite) at step {int(step)}; training stopped. "
        f"{resume}, after lowering the learning rate, enabling config.optim.clip_grad_norm "
        "or checking the input data"
    )
