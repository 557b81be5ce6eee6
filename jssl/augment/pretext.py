"""Classic pretext tasks: inputs and labels made on device, batched with ``jax.vmap``.

* rotation (Gidaris et al. 2018, RotNet): every image in its 4 rotations, labels 0..3;
* jigsaw (Noroozi & Favaro 2016): 3x3 tiles shuffled by one of a fixed set of
  permutations chosen for maximal minimum Hamming distance, label = permutation index;
* colorization (Zhang et al. 2016): L input and a quantised ab class per pixel;
* context prediction (Doersch et al. 2015): centre and neighbour patch, label in 0..7.

Single-image functions take one key and one float image [H, W, C] in [0, 1]; vmap them
(``ops.apply_batch``) for a batch. Each draws ONE uniform vector (cheap to compile).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jssl.augment.color import lab_to_rgb, rgb_to_lab  # noqa: F401  (re-exported)
from jssl.augment.ops import check_image

# context prediction: (row, col) offset of the neighbour for labels 0..7 (row-major, the
# centre skipped): 0 = top-left, 1 = top, 2 = top-right, 3 = left, 4 = right, ...
CONTEXT_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# ---------------------------------------------------------------------------- rotation
def rotate(image: jax.Array, k: int | jax.Array) -> jax.Array:
    """Rotate [H, W, C] by k * 90 degrees counter-clockwise (``jnp.rot90``); k may be traced
    (then H must equal W so that every branch has one shape)."""
    check_image(image)
    if isinstance(k, int):
        return jnp.rot90(image, k, axes=(0, 1))
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"a traced k needs a square image, got shape {image.shape}; "
                         "pass k as a Python int or crop to a square first")
    return jax.lax.switch(jnp.mod(k, 4), [lambda x, r=r: jnp.rot90(x, r, axes=(0, 1))
                                           for r in range(4)], image)


def rotate_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All 4 rotations of images [B, S, S, C] -> ([4B, S, S, C], labels [4B] int32).

    Example-major order: rows 4b..4b+3 are example b at 0, 90, 180, 270 degrees, so a
    batch-sharded input stays on its device.
    """
    if jnp.ndim(images) != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [B, S, S, C] (square), got shape "
                         f"{tuple(jnp.shape(images))}; centre-crop to a square first")
    rot = jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)], axis=1)
    labels = jnp.tile(jnp.arange(4, dtype=jnp.int32), images.shape[0])
    return rot.reshape((-1,) + images.shape[1:]), labels


# ------------------------------------------------------------------------------ jigsaw
@functools.lru_cache(maxsize=16)
def _greedy_perms(num_perms: int, seed: int, num_candidates: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cand = np.argsort(rng.random((num_candidates, n)), axis=1).astype(np.int32)
    _, first = np.unique(cand, axis=0, return_index=True)
    cand = cand[np.sort(first)]  # distinct, in drawing order
    if num_perms > len(cand):
        raise ValueError(f"num_perms={num_perms} exceeds the {len(cand)} distinct candidates; "
                         "raise num_candidates")
    chosen = [0]  # start from a random permutation (the first draw)
    min_dist = (cand != cand[0]).sum(axis=1)
    for _ in range(num_perms - 1):
        i = int(np.argmax(min_dist))  # maximise the minimum Hamming distance to the set
        chosen.append(i)
        min_dist = np.minimum(min_dist, (cand != cand[i]).sum(axis=1))
    out = cand[chosen]
    out.setflags(write=False)
    return out


def jigsaw_permutations(num_perms: int = 100, seed: int = 0, num_candidates: int = 10_000,
                        grid: int = 3) -> np.ndarray:
    """[num_perms, grid*grid] int32 permutation set (Noroozi & Favaro 2016, greedy max-min
    Hamming) over ``num_candidates`` random permutations; deterministic in seed, cached.

    For the defaults the minimum pairwise Hamming distance is 6 (tests/test_pretext.py).
    """
    if num_perms < 1 or grid < 2:
        raise ValueError(f"need num_perms >= 1 and grid >= 2, got {num_perms} and {grid}")
    return _greedy_perms(num_perms, seed, num_candidates, grid * grid)


def hamming_min(perms: np.ndarray) -> int:
    """Minimum pairwise Hamming distance of a permutation set."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    return int(d[~np.eye(len(perms), dtype=bool)].min())


def jigsaw(key: jax.Array, image: jax.Array, perms: np.ndarray | jax.Array, grid: int = 3,
           tile_jitter: int = 0, normalize_tiles: bool = False) -> tuple[jax.Array, jax.Array]:
    """(tiles [grid^2, h, w, C] in permuted order, label) for one image [H, W, C].

    The image is cut into grid x grid cells of (H // grid, W // grid); each tile is a
    (cell - tile_jitter)-sized crop at a random offset in its cell (Noroozi: 75 px cells,
    64 px tiles). Output slot i holds the tile of cell ``perms[label][i]``, so
    ``tiles[argsort(perms[label])]`` restores row-major order. ``normalize_tiles`` makes
    each tile zero-mean, unit-std per channel (against low-level shortcuts).
    """
    check_image(image)
    perms = jnp.asarray(perms, jnp.int32)
    cell_h, cell_w = image.shape[0] // grid, image.shape[1] // grid
    if perms.ndim != 2 or perms.shape[1] != grid * grid:
        raise ValueError(f"perms must be [P, {grid * grid}], got shape {perms.shape}")
    if not 0 <= tile_jitter < min(cell_h, cell_w):
        raise ValueError(f"tile_jitter must be in [0, {min(cell_h, cell_w)}) for "
                         f"{cell_h}x{cell_w} cells, got {tile_jitter}")
    u = jax.random.uniform(key, (1 + 2 * grid * grid,))
    label = jnp.minimum(jnp.floor(u[0] * perms.shape[0]), perms.shape[0] - 1).astype(jnp.int32)
    off = jnp.floor(u[1:] * (tile_jitter + 1)).astype(jnp.int32).reshape(grid * grid, 2)
    th, tw, c = cell_h - tile_jitter, cell_w - tile_jitter, image.shape[-1]
    tiles = jnp.stack([
        jax.lax.dynamic_slice(image, (r * cell_h + off[r * grid + q, 0],
                                      q * cell_w + off[r * grid + q, 1], 0), (th, tw, c))
        for r in range(grid) for q in range(grid)])
    if normalize_tiles:
        mean = tiles.mean(axis=(1, 2), keepdims=True)
        tiles = (tiles - mean) / (tiles.std(axis=(1, 2), keepdims=True) + 1e-5)
    return tiles[perms[label]], label


# ------------------------------------------------------------------------ colorization
@functools.lru_cache(maxsize=8)
def _ab_tables(num_bins: int, bin_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(centres [K, 2] of the in-gamut bins, lut [num_bins^2] full-grid -> class)."""
    if num_bins < 1 or num_bins % 2 == 0 or bin_size <= 0:
        raise ValueError(f"num_bins must be odd (0 is a bin centre) and bin_size > 0, got "
                         f"{num_bins} and {bin_size}")
    levels = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    with jax.ensure_compile_time_eval():
        ab = np.asarray(jax.jit(rgb_to_lab)(rgb))[:, 1:]
    idx = np.clip(np.round(ab / bin_size) + num_bins // 2, 0, num_bins - 1).astype(np.int64)
    in_gamut = np.zeros(num_bins * num_bins, bool)
    in_gamut[idx[:, 0] * num_bins + idx[:, 1]] = True
    grid = (np.arange(num_bins) - num_bins // 2) * bin_size
    full = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    centres = full[in_gamut].astype(np.float32)
    nearest = np.argmin(((full[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    return centres, nearest.astype(np.int32)


def ab_bin_centers(num_bins: int = 23, bin_size: float = 10.0) -> np.ndarray:
    """[K, 2] (a, b) centres of the in-gamut classes (decode a prediction with these)."""
    return _ab_tables(num_bins, bin_size)[0]


def colorization_targets(image: jax.Array, num_bins: int = 23,
                         bin_size: float = 10.0) -> tuple[jax.Array, jax.Array]:
    """(L / 100 as [H, W, 1] in [0, 1], ab class per pixel [H, W] int32).

    The ab plane is cut into num_bins x num_bins square bins of side ``bin_size`` centred
    on multiples of bin_size (default 23 x 23 bins of 10 centred on -110..110, the grid
    of Zhang et al. 2016); the classes are the bins hit by a 64^3 sampling of the sRGB
    cube (``len(ab_bin_centers())`` = 261 of them), in row-major (a, b) order; a pixel in
    any other bin gets the nearest in-gamut class. Neutral colours land in the (0, 0) bin.
    A 1-channel image is treated as grey: ab = 0 everywhere, so every pixel gets the same
    class and the task degenerates (e.g. Fashion-MNIST) -- use it on RGB data.
    """
    check_image(image)
    _, lut = _ab_tables(num_bins, bin_size)
    lab = rgb_to_lab(jnp.broadcast_to(image, image.shape[:2] + (3,)))
    ij = jnp.clip(jnp.round(lab[..., 1:] / bin_size) + num_bins // 2, 0, num_bins - 1)
    ij = ij.astype(jnp.int32)
    labels = jnp.asarray(lut)[ij[..., 0] * num_bins + ij[..., 1]]
    return lab[..., :1] / 100.0, labels


# ------------------------------------------------------------------ context prediction
def context_pair(key: jax.Array, image: jax.Array, patch_size: int, gap: int,
                 jitter: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(centre patch, neighbour patch, label in 0..7) for one image [H, W, C].

    A 3 x 3 layout of patch_size patches separated by ``gap`` pixels is placed at a random
    position; the neighbour is the patch at ``CONTEXT_OFFSETS[label]``; each patch moves
    by an independent uniform shift in [-jitter, jitter] per axis (Doersch et al.: 96 px
    patches, gap 48, jitter 7). Needs H, W >= 3 * patch_size + 2 * (gap + jitter).
    """
    check_image(image)
    span = 3 * patch_size + 2 * gap + 2 * jitter
    if patch_size < 1 or gap < 0 or jitter < 0 or span > min(image.shape[:2]):
        raise ValueError(f"patch_size={patch_size}, gap={gap}, jitter={jitter} need a "
                         f"{span}x{span} region, image is {image.shape[:2]}; use smaller "
                         "patches/gap or a larger image")
    u = jax.random.uniform(key, (7,))
    label = jnp.minimum(jnp.floor(u[0] * 8), 7).astype(jnp.int32)
    origin = jnp.floor(u[1:3] * (jnp.asarray(image.shape[:2]) - span + 1)).astype(jnp.int32)
    shifts = jnp.floor(u[3:] * (2 * jitter + 1)).astype(jnp.int32).reshape(2, 2) - jitter
    step = patch_size + gap
    centre_tl = origin + jitter + step
    neigh_tl = centre_tl + jnp.asarray(CONTEXT_OFFSETS, jnp.int32)[label] * step
    size = (patch_size, patch_size, image.shape[-1])
    centre = jax.lax.dynamic_slice(image, (*(centre_tl + shifts[0]), 0), size)
    neighbour = jax.lax.dynamic_slice(image, (*(neigh_tl + shifts[1]), 0), size)
    return centre, neighbour, label
