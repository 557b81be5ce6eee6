"""I-JEPA multi-block masks (Assran et al. 2023, ``MaskCollator`` in ijepa's
``src/masks/multiblock.py``), with static shapes.

Per step (one draw for the whole batch, as I-JEPA's collator):

* a target block size: scale s ~ U(target_scale), aspect a ~ U(target_aspect),
  ``h = round(sqrt(s·N·a))``, ``w = round(sqrt(s·N / a))`` with ``N = H·W`` (``s·N``
  truncated to an int), shrunk until ``h < H`` and ``w < W``;
* a context block size the same way from ``context_scale`` and aspect 1.

Per image: ``num_targets`` target blocks and one context block at uniform positions; the
context keeps only the patches outside every target block (I-JEPA's
``allow_overlap=False``).

Static shapes: a block of ``h × w`` patches lives in a fixed grid of ``h_max × w_max`` slots
(the largest size the draw can give); slot ``(i, j)`` holds patch ``(top + i, left + j)`` and
is *valid* iff ``i < h`` and ``j < w`` (and, for the context, the patch is in no target
block). Invalid slots hold a clipped, in-range patch index and must be masked (the encoder's
``keep_valid``, zero loss weight). I-JEPA instead truncates every image's context to the
batch's smallest count; here each image keeps its whole context.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jssl.masking._common import _check_batch_size, _check_int, _typed_key


def _block_hw(n: int, grid: tuple[int, int], scale: float, aspect: float) -> tuple[int, int]:
    keep = int(n * scale)
    h, w = round(math.sqrt(keep * aspect)), round(math.sqrt(keep / aspect))
    return max(1, min(h, grid[0] - 1)), max(1, min(w, grid[1] - 1))


def max_block(grid: tuple[int, int], scale: tuple[float, float],
              aspect: tuple[float, float]) -> tuple[int, int]:
    """The slot grid ``(h_max, w_max)`` that holds every block the draw can give."""
    n = grid[0] * grid[1]
    return (_block_hw(n, grid, scale[1], aspect[1])[0], _block_hw(n, grid, scale[1],
                                                                   aspect[0])[1])


def _draw_hw(key, grid, scale, aspect, hw_max):
    n = grid[0] * grid[1]
    ks, ka = jax.random.split(key)
    s = jax.random.uniform(ks, (), minval=scale[0], maxval=scale[1])
    a = jax.random.uniform(ka, (), minval=aspect[0], maxval=aspect[1])
    keep = jnp.floor(n * s)
    h = jnp.clip(jnp.round(jnp.sqrt(keep * a)), 1, min(grid[0] - 1, hw_max[0]))
    w = jnp.clip(jnp.round(jnp.sqrt(keep / a)), 1, min(grid[1] - 1, hw_max[1]))
    return h.astype(jnp.int32), w.astype(jnp.int32)


def _place(key, grid, h, w, hw_max):
    """(ids [h_max·w_max], valid [h_max·w_max], cover [H·W]) of one block at a random spot."""
    kt, kl = jax.random.split(key)
    top = jax.random.randint(kt, (), 0, grid[0] - h + 1)
    left = jax.random.randint(kl, (), 0, grid[1] - w + 1)
    i, j = jnp.meshgrid(jnp.arange(hw_max[0]), jnp.arange(hw_max[1]), indexing="ij")
    valid = ((i < h) & (j < w)).reshape(-1)
    rows = jnp.minimum(top + i, grid[0] - 1).reshape(-1)
    cols = jnp.minimum(left + j, grid[1] - 1).reshape(-1)
    ids = (rows * grid[1] + cols).astype(jnp.int32)
    cover = jnp.zeros(grid[0] * grid[1], bool).at[ids].max(valid)
    return ids, valid, cover


def multiblock_masks(
    key: jax.Array,
    grid: tuple[int, int],
    batch_size: int,
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
) -> dict[str, jax.Array]:
    """I-JEPA's masks for ``batch_size`` images of ``grid`` patches.

    Returns ``{"target_ids", "target_valid"}`` of shape ``[B, M, Kt]`` (``Kt = h_max·w_max``
    of the target draw) and ``{"context_ids", "context_valid"}`` of shape ``[B, Kc]``.
    """
    grid = (_check_int("grid[0]", grid[0], 2, "use a patch grid of at least 2×2"),
            _check_int("grid[1]", grid[1], 2, "use a patch grid of at least 2×2"))
    _check_int("num_targets", num_targets, 1, "I-JEPA uses 4")
    batch_size = _check_batch_size(batch_size)
    for name, (lo, hi) in (("target_scale", target_scale), ("context_scale", context_scale)):
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"{name}={(lo, hi)} must satisfy 0 < low <= high <= 1; I-JEPA "
                             f"uses (0.15, 0.2) for targets and (0.85, 1.0) for the context")
    if not 0.0 < target_aspect[0] <= target_aspect[1]:
        raise ValueError(f"target_aspect={tuple(target_aspect)} must satisfy 0 < low <= high;"
                         f" I-JEPA uses (0.75, 1.5)")
    return _impl(_typed_key(key), grid=grid, batch_size=batch_size, num_targets=num_targets,
                 target_scale=tuple(target_scale), target_aspect=tuple(target_aspect),
                 context_scale=tuple(context_scale))


@functools.partial(jax.jit, static_argnames=("grid", "batch_size", "num_targets",
                                             "target_scale", "target_aspect", "context_scale"))
def _impl(key, *, grid, batch_size, num_targets, target_scale, target_aspect, context_scale):
    t_max = max_block(grid, target_scale, target_aspect)
    c_max = max_block(grid, context_scale, (1.0, 1.0))
    k_t, k_c, k_pos = jax.random.split(key, 3)
    th, tw = _draw_hw(k_t, grid, target_scale, target_aspect, t_max)
    ch, cw = _draw_hw(k_c, grid, context_scale, (1.0, 1.0), c_max)

    def one(k):
        keys = jax.random.split(k, num_targets + 1)
        t_ids, t_valid, t_cover = jax.vmap(lambda kk: _place(kk, grid, th, tw, t_max))(
            keys[:num_targets])
        c_ids, c_valid, _ = _place(keys[-1], grid, ch, cw, c_max)
        c_valid = c_valid & ~jnp.any(t_cover, axis=0)[c_ids]
        return t_ids, t_valid, c_ids, c_valid

    t_ids, t_valid, c_ids, c_valid = jax.vmap(one)(jax.random.split(k_pos, batch_size))
    return {"target_ids": t_ids, "target_valid": t_valid, "context_ids": c_ids,
            "context_valid": c_valid}
