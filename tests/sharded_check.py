"""1-vs-N device equivalence: value and gradient of a loss under shard_map equal
the one-device computation on the global batch.

    assert_sharded_equal(losses.nt_xent, (z1, z2), batch_argnums=(0, 1),
                         n_devices=8, temperature=0.1)
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.losses.sharding import shard_loss


def make_mesh(shape: Sequence[int], names: Sequence[str]) -> jax.sharding.Mesh:
    n = int(np.prod(shape))
    return jax.make_mesh(tuple(shape), tuple(names), devices=jax.devices()[:n])


def sharded_value_and_grad(loss_fn, args, *, batch_argnums, mesh, axis_name, grad_argnums,
                           **kw):
    """(value, grads) of the shard_map'ped loss, arrays placed on the mesh first."""
    placed = [
        jax.device_put(a, NamedSharding(mesh, P(axis_name) if i in batch_argnums else P()))
        for i, a in enumerate(args)
    ]
    f = shard_loss(loss_fn, mesh, batch_argnums=batch_argnums, axis_name=axis_name, **kw)
    return jax.jit(jax.value_and_grad(f, argnums=grad_argnums))(*placed)


def global_value_and_grad(loss_fn, args, *, grad_argnums, **kw):
    f = functools.partial(loss_fn, axis_name=None, **kw)
    return jax.jit(jax.value_and_grad(f, argnums=grad_argnums))(*args)


def assert_sharded_equal(loss_fn, args, *, batch_argnums, n_devices=8, grad_argnums=None,
                         mesh_shape=None, axis_name="data", rtol=1e-5, atol=1e-6, **kw):
    """Value and every gradient on ``n_devices`` equal the global 1-device result."""
    if grad_argnums is None:
        grad_argnums = tuple(range(len(args)))
    if mesh_shape is None:
        mesh_shape, names = (n_devices,), (axis_name,)
    else:
        names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    mesh = make_mesh(mesh_shape, names)
    v1, g1 = global_value_and_grad(loss_fn, args, grad_argnums=grad_argnums, **kw)
    vn, gn = sharded_value_and_grad(loss_fn, args, batch_argnums=batch_argnums, mesh=mesh,
                                    axis_name=axis_name, grad_argnums=grad_argnums, **kw)
    np.testing.assert_allclose(np.asarray(vn), np.asarray(v1), rtol=rtol, atol=atol,
                               err_msg="loss value differs between 1 and N devices")
    for i, a, b in zip(grad_argnums, g1, gn, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=atol,
                                   err_msg=f"gradient of argument {i} differs between 1 and "
                                           f"N devices")
    return v1, g1
