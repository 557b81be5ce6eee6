"""Device mesh, shardings and multi-process start-up, all from the config.

The mesh comes from ``config.mesh``, a mapping from axis name to size, e.g.
``{"data": -1, "fsdp": 1}`` (``-1`` = all remaining devices), or a list of
``(name, size)`` pairs (big_vision style) when a custom axis order is wanted.
``ml_collections.ConfigDict`` sorts its keys, so for a mapping the order is
canonical: ``data`` (outermost), ``fsdp``, then any other axes alphabetically.
``fsdp`` sits inside ``data`` so its frequent all-gathers run between
neighbouring devices.

Sharding decisions (the trainer and the methods rely on these):

* **Batch**: axis 0 of every batch array is split over all *batch axes*,
  ``("data", "fsdp")`` restricted to the axes the mesh has. With FSDP every
  device holds a different slice of the batch, exactly as in data parallelism;
  FSDP only changes where the params live. Losses therefore receive
  ``axis_name=batch_axes(mesh)``.
* **Params** (and optimizer state and method state, which share their
  shapes): replicated, except that with an ``fsdp`` axis of size > 1 arrays of
  at least ``min_size_mb`` are split along their largest dimension that
  divides by the fsdp size (big_vision's ``fsdp`` rule).

The mesh is built with ``AxisType.Auto`` axes: jit/GSPMD propagates shardings,
and cross-device work in the losses is explicit through ``shard_map``.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
_CANONICAL_ORDER = ("data", "fsdp")


def _axes_from_config(config: Any) -> list[tuple[str, int]]:
    """``[(name, size), ...]`` from ``config.mesh``, the mesh section or a pair list."""
    section = config
    if isinstance(config, Mapping) and "mesh" in config:
        section = config["mesh"]
    elif hasattr(config, "mesh") and not isinstance(config, Mesh):
        maybe = config.mesh
        if isinstance(maybe, Mapping) or hasattr(maybe, "items") or isinstance(maybe, list | tuple):
            section = maybe
    if hasattr(section, "items"):
        pairs = list(section.items())
        known = [p for n in _CANONICAL_ORDER for p in pairs if p[0] == n]
        others = sorted(p for p in pairs if p[0] not in _CANONICAL_ORDER)
        pairs = known + others
    elif isinstance(section, list | tuple):
        pairs = [tuple(p) for p in section]
    else:
        raise ValueError(
            f"config.mesh={section!r} is not a mapping of axis name to size; "
            'use e.g. config.mesh = {"data": -1, "fsdp": 1}'
        )
    if not pairs:
        raise ValueError('config.mesh is empty; use e.g. config.mesh = {"data": -1}')
    out = []
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"config.mesh entry {pair!r} is not a (name, size) pair")
        name, size = pair
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or (
            size < 1 and size != -1
        ):
            raise ValueError(
                f"config.mesh.{name}={size!r} is not a positive int or -1; "
                "give the axis size, or -1 for all remaining devices"
            )
        out.append((name, int(size)))
    return out


def make_mesh(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build the device mesh from ``config.mesh`` (or the mesh section itself).

    At most one axis may be ``-1``; it takes all devices the others leave. The
    product of the sizes must equal the number of devices (``jax.device_count()``
    unless ``devices`` is given), otherwise a one-line ``ValueError`` says so.
    """
    axes = _axes_from_config(config)
    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    names = tuple(n for n, _ in axes)
    if len(set(names)) != len(names):
        raise ValueError(f"config.mesh has repeated axis names {names}; name each axis once")
    wild = [n for n, s in axes if s == -1]
    if len(wild) > 1:
        raise ValueError(
            f"config.mesh sets {len(wild)} axes {tuple(wild)} to -1; at most one axis may be -1"
        )
    fixed = math.prod(s for _, s in axes if s != -1)
    if wild:
        if n_dev % fixed:
            raise ValueError(
                f"config.mesh={dict(axes)}: the fixed axes use {fixed} devices, which does not "
                f"divide jax.device_count()={n_dev}; make their product divide {n_dev}"
            )
        axes = [(n, n_dev // fixed if s == -1 else s) for n, s in axes]
    shape = tuple(s for _, s in axes)
    if math.prod(shape) != n_dev:
        raise ValueError(
            f"config.mesh={dict(axes)} spans {math.prod(shape)} devices on axes {names} but "
            f"jax.device_count()={n_dev}; make the product {n_dev} or set one axis to -1"
        )
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch is split over: ``("data", "fsdp")`` ∩ mesh axes."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    if not axes:
        raise ValueError(
            f"mesh axes {tuple(mesh.shape)} contain none of the batch axes {BATCH_AXES}; "
            'add a "data" axis to config.mesh'
        )
    return axes


def num_batch_devices(mesh: Mesh) -> int:
    """How many ways the batch is split (the product of the batch axes' sizes)."""
    return int(math.prod(mesh.shape[a] for a in batch_axes(mesh)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 0 split over the batch axes, other axes unsplit (``P(("data", "fsdp"))``)."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding (scalars, step counters, PRNG keys)."""
    return NamedSharding(mesh, P())


def check_global_batch(
    global_batch: int, mesh: Mesh, field: str = "config.train.batch_size"
) -> None:
    """Raise a one-line ``ValueError`` unless ``global_batch`` splits evenly over the batch axes."""
    n = num_batch_devices(mesh)
    if global_batch < 1 or global_batch % n:
        raise ValueError(
            f"{field}={global_batch} is not divisible by the {n} devices on mesh axes "
            f"{batch_axes(mesh)}; use a multiple of {n}"
        )


def _fsdp_spec(shape: Sequence[int], nbytes: int, fsdp: int, min_bytes: float) -> P:
    if fsdp <= 1 or nbytes < min_bytes or not shape:
        return P()
    # Largest dimension first; ties go to the later (usually the output) dimension.
    for dim in sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def param_sharding(params: Any, mesh: Mesh, min_size_mb: float = 4.0) -> Any:
    """A pytree of ``NamedSharding`` for ``params`` (arrays or ``ShapeDtypeStruct``s).

    Replicated everywhere, except that with an ``fsdp`` axis of size > 1 each
    array of at least ``min_size_mb`` MiB is split over ``fsdp`` along its
    largest dimension divisible by the fsdp size (kept whole if none divides).
    """
    fsdp = int(mesh.shape.get("fsdp", 1))
    min_bytes = min_size_mb * 2**20

    def one(x):
        shape = tuple(np.shape(x))
        nbytes = math.prod(shape) * np.dtype(x.dtype).itemsize
        return NamedSharding(mesh, _fsdp_spec(shape, nbytes, fsdp, min_bytes))

    return jax.tree.map(one, params)


def _cluster_env() -> str | None:
    """Name of a multi-process launcher found in the environment, else ``None``.

    Mirrors what ``jax.distributed.initialize()`` can auto-detect: SLURM
    (``SLURM_JOB_ID`` + ``SLURM_NTASKS`` > 1), Open MPI (``OMPI_MCA_orte_hnp_uri``),
    multi-host Cloud TPU (``TPU_WORKER_HOSTNAMES``/``TPU_PROCESS_ADDRESSES`` listing
    more than one host, or ``MEGASCALE_COORDINATOR_ADDRESS``).
    """
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env:
        return "ompi"
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env:
        return "tpu"
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_seconds: int = 30,
    **kwargs: Any,
) -> bool:
    """Start JAX's multi-process runtime if this run has more than one process.

    * No arguments and no launcher in the environment: a single process; does
      nothing and returns ``False``.
    * No arguments under SLURM / Open MPI / multi-host TPU (see ``_cluster_env``):
      calls ``jax.distributed.initialize()``, which auto-detects the coordinator,
      process count and id.
    * Arguments given: passed through to ``jax.distributed.initialize``
      (extra keyword arguments too, e.g. ``local_device_ids``).

    Cross-process collectives on CPU use gloo (set before initializing, unless
    the user already chose another implementation, e.g. ``mpi``). Must run
    before anything touches the devices. Returns ``True`` once initialized.

    Dead processes: JAX's coordination service (hosted by process 0) stops every
    process, with a fatal log naming the task, when one has sent no heartbeat for
    ``heartbeat_timeout_seconds`` (JAX's default is 100 s; 30 s here). If process 0
    dies, the others stop at once ("Failed to send RPC to coordination service").
    A process blocked in a collective with a dead peer is stopped the same way.
    """
    if jax.distributed.is_initialized():
        return True
    given = any(v is not None for v in (coordinator_address, num_processes, process_id))
    launcher = _cluster_env()
    if not given and not launcher:
        return False
    if heartbeat_timeout_seconds < 1:
        raise ValueError(f"heartbeat_timeout_seconds={heartbeat_timeout_seconds} must be >= 1 "
                         "(seconds without heartbeats before a process counts as dead)")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be >= 1")
    if process_id is not None and (
        process_id < 0 or (num_processes is not None and process_id >= num_processes)
    ):
        raise ValueError(
            f"process_id={process_id} is outside [0, num_processes={num_processes}); "
            "give each process a distinct id from 0"
        )
    if jax.config.jax_cpu_collectives_implementation in (None, "gloo"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info(
        "jax.distributed.initialize(coordinator_address=%s, num_processes=%s, process_id=%s, "
        "heartbeat_timeout_seconds=%d)%s",
        coordinator_address, num_processes, process_id, heartbeat_timeout_seconds,
        f" auto-detected from {launcher}" if not given else "",
    )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        **kwargs,
    )
    return True
