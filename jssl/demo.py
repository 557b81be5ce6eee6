"""A short tour of jssl's sharding-aware losses: `python -m jssl.demo`.

It simulates 8 CPU devices, computes each cross-device loss once on global
arrays (one device) and once inside ``jax.shard_map`` over an 8-device mesh
(each device holding 1/8 of the batch, negatives all-gathered), and prints the
two values and the largest gradient difference. Then it fits a small linear
encoder with NT-Xent on the mesh for a few steps to show the loss going down.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jssl import losses  # noqa: E402


def _embeddings(seed: int, batch: int, dim: int) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    z1 = jax.random.normal(k1, (batch, dim))
    z2 = z1 + 0.5 * jax.random.normal(k2, (batch, dim))  # correlated second view
    return z1 / jnp.linalg.norm(z1, axis=1, keepdims=True), z2 / jnp.linalg.norm(z2, axis=1,
                                                                                 keepdims=True)


def compare(mesh: jax.sharding.Mesh, batch: int = 64, dim: int = 32) -> None:
    z1, z2 = _embeddings(0, batch, dim)
    scale, bias = jnp.float32(10.0), jnp.float32(-5.0)
    cases = {
        "nt_xent": (losses.nt_xent, (z1, z2), (0, 1)),
        "clip": (losses.clip, (z1, z2, scale), (0, 1)),
        "siglip": (losses.siglip, (z1, z2, scale, bias), (0, 1)),
        "byol": (losses.byol, (z1, z2), (0, 1)),
    }
    n = mesh.devices.size
    print(f"{'loss':10s} {'1 device':>12s} {f'{n} devices':>12s} {'max |Δgrad|':>12s}")
    for name, (fn, args, batch_argnums) in cases.items():
        argnums = tuple(range(len(args)))
        v1, g1 = jax.jit(jax.value_and_grad(fn, argnums=argnums))(*args)
        sharded = losses.shard_loss(fn, mesh, batch_argnums=batch_argnums)
        vn, gn = jax.jit(jax.value_and_grad(sharded, argnums=argnums))(*args)
        dg = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g1, gn, strict=True))
        print(f"{name:10s} {float(v1):12.6f} {float(vn):12.6f} {dg:12.2e}")


def train_linear_simclr(mesh: jax.sharding.Mesh, steps: int = 30) -> None:
    """Fit W so that two noisy views of the same point agree under NT-Xent."""
    data = jax.random.normal(jax.random.key(1), (256, 16))
    w = jax.random.normal(jax.random.key(2), (16, 8)) * 0.1
    opt = optax.adam(3e-2)
    state = opt.init(w)
    loss_fn = losses.shard_loss(losses.nt_xent, mesh, batch_argnums=(0, 1), temperature=0.2)

    @jax.jit
    def step(w, state, key):
        k1, k2 = jax.random.split(key)
        x1 = data + 0.3 * jax.random.normal(k1, data.shape)
        x2 = data + 0.3 * jax.random.normal(k2, data.shape)
        loss, g = jax.value_and_grad(lambda w: loss_fn(x1 @ w, x2 @ w))(w)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state, loss

    print(f"\nNT-Xent on a {mesh.devices.size}-device mesh, batch 256, linear encoder:")
    t0 = time.perf_counter()
    for i in range(steps):
        w, state, loss = step(w, state, jax.random.fold_in(jax.random.key(3), i))
        if i % 10 == 0 or i == steps - 1:
            print(f"  step {i:3d}  loss {float(loss):.4f}")
    print(f"  ({time.perf_counter() - t0:.1f} s; chance level is log(511) = {np.log(511):.4f})")


def main() -> None:
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    print(f"jssl losses on {jax.device_count()} {jax.devices()[0].platform} devices\n")
    compare(mesh)
    train_linear_simclr(mesh)


if __name__ == "__main__":
    main()
