"""Image patches for ViTs: MAE's patch layout and the fixed / interpolated position embeddings.

``patchify``/``unpatchify`` use MAE's layout: ``[B, L, p*p*C]`` with the patch pixels
flattened in (row, col, channel) order and patches in raster order. ``jssl.models.vit``
re-exports all four functions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def patchify(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
    """``[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C]`` (MAE layout: raster patches, (p, p, C))."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={p}; "
                         f"resize/crop to a multiple of {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jnp.ndarray, patch_size: int, grid: tuple[int, int],
               channels: int) -> jnp.ndarray:
    """Inverse of :func:`patchify`: ``[B, gh*gw, p*p*C] -> [B, gh*p, gw*p, C]``."""
    b, n, d = patches.shape
    gh, gw = grid
    p = patch_size
    if n != gh * gw or d != p * p * channels:
        raise ValueError(f"patches of shape {patches.shape} do not match grid={grid}, "
                         f"patch_size={p}, channels={channels}")
    x = patches.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, channels)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding ``[gh*gw (+1), dim]`` as in MAE / MoCo v3.

    The first ``dim/2`` channels encode the column (w) coordinate and the last ``dim/2`` the
    row (h) coordinate, each as ``[sin(pos*omega), cos(pos*omega)]`` with
    ``omega_k = 1 / 10000^(k / (dim/4))``. With ``cls_token`` a zero row is prepended.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got dim={dim}")
    gh, gw = grid
    ww, hh = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    emb = np.concatenate([_sincos_1d(dim // 2, ww), _sincos_1d(dim // 2, hh)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


def interpolate_pos_embed(pos: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
    """Learned positions ``[1, G*G, D]`` (a square grid) resized to ``grid`` -> ``[1, gh*gw, D]``.

    Bicubic (Keys, a = -0.5) with half-pixel centres and no anti-aliasing, as DINO's
    ``interpolate_pos_encoding`` (torch's bicubic uses a = -0.75): each output position is a
    weighted sum of the 4x4 nearest stored positions.
    """
    n, d = pos.shape[1], pos.shape[2]
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"pos_embed holds {n} positions, not a square grid; interpolation "
                         f"needs the model initialised on square images")
    grid_pos = pos.reshape(g, g, d).astype(jnp.float32)
    out = jax.image.resize(grid_pos, (*grid, d), method="bicubic", antialias=False)
    return out.reshape(1, grid[0] * grid[1], d).astype(pos.dtype)
