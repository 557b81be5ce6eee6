"""Run a jssl loss over a device mesh with ``jax.shard_map``.

``shard_loss`` is the convenience users reach for when their batch is a global
array: it checks that every batch-sharded argument divides by the number of
devices on the axis (a clear error instead of a silent shrink), and returns the
global-batch loss replicated on every device.

On a mesh with Explicit axes the arguments are resharded onto the ``in_specs``
sharding (batch arguments split over ``axis_name``, the rest replicated); with
Auto axes (GSPMD, as the trainer's mesh) ``shard_map`` does that itself. Either
way NumPy arrays work as well as arrays already placed on the mesh.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _axis_devices(mesh: Mesh, axis_name) -> int:
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    for n in names:
        if n not in mesh.shape:
            raise ValueError(
                f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}; "
                f"pass one of {tuple(mesh.shape)}"
            )
    return int(np.prod([mesh.shape[n] for n in names]))


def shard_loss(
    loss_fn: Callable,
    mesh: Mesh,
    *,
    batch_argnums: Sequence[int],
    axis_name="data",
    **loss_kwargs,
) -> Callable:
    """Wrap ``loss_fn(*args, axis_name=..., **loss_kwargs)`` in ``jax.shard_map``.

    Positional arguments listed in ``batch_argnums`` are split along axis 0 over
    ``axis_name``; the others (queues, centers, logit scales) are replicated.
    The returned function gives the same value and gradient as
    ``loss_fn(*args, axis_name=None, **loss_kwargs)`` on the global arrays.
    """
    n_dev = _axis_devices(mesh, axis_name)
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    explicit = all(types[n] == AxisType.Explicit for n in names)
    params = list(inspect.signature(loss_fn).parameters)
    batch_argnums = tuple(batch_argnums)

    def wrapped(*args):
        for i in batch_argnums:
            for leaf in jax.tree_util.tree_leaves(args[i]):
                b = np.shape(leaf)[0] if np.ndim(leaf) else None
                if b is None or b % n_dev:
                    name = params[i] if i < len(params) else f"argument {i}"
                    raise ValueError(
                        f"{name} has global batch {b} (shape {tuple(np.shape(leaf))}), which "
                        f"does not divide by the {n_dev} devices on axis {axis_name!r}; use a "
                        f"global batch that is a multiple of {n_dev}"
                    )
        in_specs = tuple(P(axis_name) if i in batch_argnums else P() for i in range(len(args)))
        if explicit:
            # With Explicit axes shard_map wants its inputs on the in_specs sharding:
            # move them there (a no-op for arrays already placed). Auto axes reshard
            # by themselves.
            args = [
                jax.tree_util.tree_map(
                    lambda x, s=spec: jax.sharding.reshard(x, NamedSharding(mesh, s)), a
                )
                for a, spec in zip(args, in_specs, strict=True)
            ]
        body = functools.partial(loss_fn, axis_name=axis_name, **loss_kwargs)
        return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P())(*args)

    return wrapped
