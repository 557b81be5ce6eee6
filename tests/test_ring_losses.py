"""Ring (ppermute + tiled custom VJP) losses equal the gather implementation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharded_check import global_value_and_grad, make_mesh, sharded_value_and_grad

from jssl import losses
from jssl.losses.ring import tile_size


def _unit(seed, n, d):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _case(name, n=32, d=8):
    x, y = _unit(0, n, d), _unit(1, n, d)
    if name == "nt_xent":
        return losses.nt_xent, (3.0 * x, 2.0 * y), dict(temperature=0.1)
    if name == "clip":
        return losses.clip, (x, y, jnp.float32(7.0)), {}
    return losses.siglip, (x, y, jnp.float32(6.0), jnp.float32(-2.5)), {}


NAMES = ["nt_xent", "clip", "siglip"]


def _assert_close(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("n_devices, block", [(1, 8), (2, 4), (4, 3), (8, 4), (8, 1024)])
@pytest.mark.parametrize("name", NAMES)
def test_ring_equals_gather_value_and_grad(name, n_devices, block):
    fn, args, kw = _case(name)
    argnums = tuple(range(len(args)))
    ref = global_value_and_grad(fn, args, grad_argnums=argnums, **kw)
    mesh = make_mesh((n_devices,), ("data",))
    got = sharded_value_and_grad(fn, args, batch_argnums=(0, 1), mesh=mesh, axis_name="data",
                                 grad_argnums=argnums, impl="ring", block_size=block, **kw)
    _assert_close(got, ref)


@pytest.mark.parametrize("name", NAMES)
def test_single_device_tiling_with_uneven_tiles(name):
    fn, args, kw = _case(name, n=24)
    argnums = tuple(range(len(args)))
    ref = global_value_and_grad(fn, args, grad_argnums=argnums, **kw)
    got = global_value_and_grad(fn, args, grad_argnums=argnums, impl="ring", block_size=5, **kw)
    _assert_close(got, ref)
    assert tile_size(24, 5) == 4 and tile_size(7, 1024) == 7


@pytest.mark.parametrize("name", NAMES)
def test_ring_over_a_tuple_of_mesh_axes(name):
    fn, args, kw = _case(name)
    argnums = tuple(range(len(args)))
    ref = global_value_and_grad(fn, args, grad_argnums=argnums, **kw)
    mesh = make_mesh((2, 4), ("replica", "data"))
    got = sharded_value_and_grad(fn, args, batch_argnums=(0, 1), mesh=mesh,
                                 axis_name=("replica", "data"), grad_argnums=argnums,
                                 impl="ring", block_size=4, **kw)
    _assert_close(got, ref)


def _compiled(name, n, impl, n_devices=8, d=16):
    fn, args, kw = _case(name, n=n, d=d)
    mesh = make_mesh((n_devices,), ("data",))
    placed = [jax.device_put(a, NamedSharding(mesh, P("data") if i < 2 else P()))
              for i, a in enumerate(args)]
    f = losses.shard_loss(fn, mesh, batch_argnums=(0, 1), impl=impl, block_size=64, **kw)
    g = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))
    return g.lower(*placed).compile()


@pytest.mark.parametrize("name", NAMES)
def test_ring_hlo_permutes_blocks_and_never_all_gathers(name):
    ring = _compiled(name, 512, "ring").as_text()
    gather = _compiled(name, 512, "gather").as_text()
    assert "collective-permute" in ring
    assert "all-gather" not in ring and "all-to-all" not in ring
    assert "all-gather" in gather


@pytest.mark.parametrize("name", NAMES)
def test_ring_memory_grows_linearly_and_program_size_is_constant(name):
    small, big = _compiled(name, 2048, "ring"), _compiled(name, 8192, "ring")
    t_small = small.memory_analysis().temp_size_in_bytes
    t_big = big.memory_analysis().temp_size_in_bytes
    assert t_big / t_small <= 4.5, (t_small, t_big)  # linear: 4x; quadratic would be 16x
    g_small = _compiled(name, 2048, "gather").memory_analysis().temp_size_in_bytes
    g_big = _compiled(name, 8192, "gather").memory_analysis().temp_size_in_bytes
    assert g_big / g_small > 8.0, (g_small, g_big)  # the gather version is quadratic
    n_small, n_big = len(small.as_text().splitlines()), len(big.as_text().splitlines())
    assert abs(n_big - n_small) <= 0.05 * n_small


def test_ring_refuses_bad_options():
    x = _unit(0, 8, 4)
    with pytest.raises(ValueError, match="impl must be one of"):
        losses.clip(x, x, 1.0, impl="dense")
    with pytest.raises(ValueError, match="block_size"):
        losses.siglip(x, x, 1.0, 0.0, impl="ring", block_size=0)
    with pytest.raises(ValueError, match="temperature must be a Python float"):
        jax.jit(functools.partial(losses.nt_xent, impl="ring"))(x, x, jnp.float32(0.1))
