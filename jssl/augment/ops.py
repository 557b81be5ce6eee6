"""Image augmentation ops in pure JAX, made for ``jax.vmap`` inside a jitted step.

Every random op is ``op(key, image, **params) -> image`` on ONE float32 image in
[0, 1] with layout [H, W, C], C in {1, 3}; :func:`apply_batch` splits one key per
example and vmaps. Probabilistic ops compute both branches and select (under
``vmap`` a ``cond`` becomes a select anyway), so nothing leaves the device.

Each random op is a thin wrapper ``op(key, ...) = op_u(uniform(key, (N_OP,)), ...)``:
the ``*_u`` forms take their randomness as uniforms in [0, 1), so a recipe draws ONE
vector per view (each threefry call costs ~1 s of XLA compile time on CPU).
Deterministic building blocks (``adjust_*``, ``resized_crop``, ``blur_image``...)
are exposed so they can be tested against NumPy formulas.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jssl.augment.color import (  # noqa: F401  (re-exported: ops is the one-stop module)
    LUMA,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_image,
    clip01,
    default_blur_kernel_size,
    gaussian_kernel1d,
    hsv_to_rgb,
    mean_luma,
    rgb_to_grayscale,
    rgb_to_hsv,
)


# ------------------------------------------------------------------ argument checks
def check_image(image: jax.Array, name: str = "image") -> None:
    """Raise unless ``image`` is a floating [H, W, C] array with C in {1, 3}."""
    shape = tuple(jnp.shape(image))
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(f"{name} must be [H, W, C] with C in {{1, 3}}, got shape {shape}; "
                         "apply single-image ops per example (see apply_batch)")
    if not jnp.issubdtype(jnp.result_type(image), jnp.floating):
        raise ValueError(f"{name} must be float in [0, 1], got dtype {jnp.result_type(image)}; "
                         "convert with image.astype(jnp.float32) / 255")


def check_prob(name: str, p: float | jax.Array) -> None:
    """Raise unless a concrete p is in [0, 1] (a traced p, e.g. vmapped per view, is kept)."""
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def check_interval(name: str, value: Sequence[float], lo: float, hi: float) -> None:
    """Raise unless value = (a, b) with lo < a <= b <= hi."""
    if len(value) != 2 or not lo < value[0] <= value[1] <= hi:
        raise ValueError(f"{name} must be (min, max) with {lo} < min <= max <= {hi}, "
                         f"got {tuple(value)}")


def out_hw(size: int | Sequence[int], name: str = "out_size") -> tuple[int, int]:
    """An int or (height, width) -> (height, width), checked."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size}")
    return int(hw[0]), int(hw[1])


def _lerp(u: jax.Array, lo: float, hi: float) -> jax.Array:
    """Map u ~ U[0, 1) to U[lo, hi)."""
    return lo + (hi - lo) * u


def apply_batch(fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
                images: jax.Array) -> jax.Array:
    """vmap ``fn(key, image)`` over images [B, H, W, C] with one key per example."""
    if jnp.ndim(images) != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(jnp.shape(images))}")
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(fn)(keys, images)


def normalize(image: jax.Array, mean: Sequence[float] | float,
              std: Sequence[float] | float) -> jax.Array:
    """(image - mean) / std, per channel (scalars broadcast)."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    c = jnp.shape(image)[-1]
    if std.size not in (1, c) or mean.size not in (1, c):
        raise ValueError(f"mean and std must have 1 or C={c} entries, got {mean.size} and "
                         f"{std.size}; pass per-channel statistics of the dataset")
    if not np.all(std > 0):
        raise ValueError(f"std must be > 0 in every channel, got {std.tolist()}")
    return (image - mean.reshape(-1)) / std.reshape(-1)


# ----------------------------------------------------------------------- geometry
ATTEMPTS = 10
N_CROP, N_FLIP, N_JITTER, N_GRAY, N_BLUR, N_SOLARIZE = 2 * ATTEMPTS + 2, 1, 9, 1, 2, 1


def random_crop_box(key: jax.Array, height: int, width: int,
                    scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
    """torchvision's RandomResizedCrop box as int32 [top, left, h, w]."""
    return crop_box_u(jax.random.uniform(key, (N_CROP,)), height, width, scale, ratio)


def crop_box_u(u: jax.Array, height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
    """The box from N_CROP uniforms: 10 candidates (area fraction ~ U(scale), log-aspect ~
    U(log ratio)) drawn at once, the first that fits is kept, else torchvision's central crop.
    """
    check_interval("scale", scale, 0.0, 1.0)
    check_interval("ratio", ratio, 0.0, math.inf)
    attempts = ATTEMPTS
    target = height * width * _lerp(u[:attempts], *scale)
    aspect = jnp.exp(_lerp(u[attempts:2 * attempts], math.log(ratio[0]), math.log(ratio[1])))
    ws = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    valid = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = jnp.argmax(valid)
    in_ratio = width / height  # static fallback, as torchvision
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fh, fw = height, width
    any_valid = jnp.any(valid)
    h = jnp.where(any_valid, hs[first], fh)
    w = jnp.where(any_valid, ws[first], fw)
    top_rand = jnp.floor(u[-2] * (height - h + 1)).astype(jnp.int32)
    left_rand = jnp.floor(u[-1] * (width - w + 1)).astype(jnp.int32)
    top = jnp.where(any_valid, jnp.minimum(top_rand, height - h), (height - fh) // 2)
    left = jnp.where(any_valid, jnp.minimum(left_rand, width - w), (width - fw) // 2)
    return jnp.stack([top, left, h, w]).astype(jnp.int32)


def resized_crop(image: jax.Array, box: jax.Array, out_size: int | Sequence[int],
                 antialias: bool = True) -> jax.Array:
    """Resize the crop ``box`` = [top, left, h, w] (may be traced) to ``out_size``.

    Bilinear via ``jax.image.scale_and_translate`` (antialiased when shrinking, like
    torchvision v2). Unlike crop-then-resize, the filter footprint may reach the pixels
    just outside the box; with a box of exactly ``out_size`` it is an exact crop.
    """
    check_image(image)
    oh, ow = out_hw(out_size)
    box = jnp.asarray(box, jnp.float32)
    scale = jnp.stack([oh / box[2], ow / box[3]])
    translation = -box[:2] * scale
    out = jax.image.scale_and_translate(image, (oh, ow, image.shape[-1]), (0, 1), scale,
                                        translation, method="linear", antialias=antialias)
    return clip01(out)


def random_resized_crop(key: jax.Array, image: jax.Array, out_size: int | Sequence[int],
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
    """torchvision RandomResizedCrop; the box is ``random_crop_box(key, H, W, ...)``."""
    return random_resized_crop_u(jax.random.uniform(key, (N_CROP,)), image, out_size, scale,
                                 ratio)


def random_resized_crop_u(u: jax.Array, image: jax.Array, out_size: int | Sequence[int],
                          scale: Sequence[float] = (0.08, 1.0),
                          ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
    check_image(image)
    return resized_crop(image, crop_box_u(u, *image.shape[:2], scale, ratio), out_size)


def horizontal_flip(key: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
    """Mirror left-right with probability p."""
    return horizontal_flip_u(jax.random.uniform(key, (N_FLIP,)), image, p)


def horizontal_flip_u(u: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
    check_image(image)
    check_prob("p", p)
    return jnp.where(u[0] < p, image[:, ::-1], image)


# ------------------------------------------------------------------------ colour
def color_jitter(key: jax.Array, image: jax.Array, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                 p: float = 0.8) -> jax.Array:
    """torchvision ColorJitter applied with probability p, the 4 ops in random order.

    Factors: brightness/contrast/saturation ~ U[max(0, 1 - s), 1 + s], hue ~ U[-hue, hue].
    Any of the 24 orders is equally likely, as torchvision/BYOL; for 1-channel images
    saturation and hue are no-ops.
    """
    return color_jitter_u(jax.random.uniform(key, (N_JITTER,)), image, brightness, contrast,
                          saturation, hue, p)


def color_jitter_u(u: jax.Array, image: jax.Array, brightness: float = 0.4,
                   contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                   p: float = 0.8) -> jax.Array:
    """:func:`color_jitter` from N_JITTER uniforms: 4 factors, apply, 4 for the order."""
    check_image(image)
    check_prob("p", p)
    for name, s in (("brightness", brightness), ("contrast", contrast),
                    ("saturation", saturation)):
        if s < 0:
            raise ValueError(f"{name} must be >= 0, got {s}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    fb, fc, fs = (_lerp(u[i], max(0.0, 1.0 - s), 1.0 + s)
                  for i, s in enumerate((brightness, contrast, saturation)))
    fh = _lerp(u[3], -hue, hue)
    rgb = image.shape[-1] == 3
    factors = jnp.stack([fb if brightness > 0 else 1.0, fc if contrast > 0 else 1.0,
                         fs if saturation > 0 and rgb else 1.0])
    # The order is argsort(u[5:9]) (op 3 = hue). Brightness, contrast and saturation are all
    # clip(f * x + (1 - f) * m) with m = 0, mean luma, luma: one blend per step, its kind and
    # factor picked per example (f = 1 is the identity). The hue shift, the costly op, runs
    # once, between the cheap ops drawn before it and those drawn after it. Same result as
    # torchvision's loop; a vmapped lax.switch would evaluate all 4 ops at each of 4 steps.
    cheap = jnp.argsort(u[5:8])
    n_before = jnp.sum(u[5:8] < u[8])

    def blend(x, j, before):
        op = cheap[j]
        f = jnp.where((j < n_before) == before, factors[op], 1.0)
        luma = rgb_to_grayscale(x)
        m = jnp.where(op == 0, 0.0, jnp.where(op == 1, mean_luma(x), luma))
        return clip01(f * x + (1.0 - f) * m)

    out = image
    for j in range(3):
        out = blend(out, j, True)
    if hue > 0 and rgb:
        out = adjust_hue(out, fh)
    for j in range(3):
        out = blend(out, j, False)
    return jnp.where(u[4] < p, out, image)


def random_grayscale(key: jax.Array, image: jax.Array, p: float = 0.2) -> jax.Array:
    """With probability p replace every channel by the BT.601 luma (C is kept)."""
    return random_grayscale_u(jax.random.uniform(key, (N_GRAY,)), image, p)


def random_grayscale_u(u: jax.Array, image: jax.Array, p: float = 0.2) -> jax.Array:
    check_image(image)
    check_prob("p", p)
    gray = jnp.broadcast_to(rgb_to_grayscale(image), image.shape)
    return jnp.where(u[0] < p, gray, image)


def solarize(key: jax.Array, image: jax.Array, p: float = 0.2,
             threshold: float = 0.5) -> jax.Array:
    """With probability p invert the pixels >= threshold (1 - x)."""
    return solarize_u(jax.random.uniform(key, (N_SOLARIZE,)), image, p, threshold)


def solarize_u(u: jax.Array, image: jax.Array, p: float = 0.2,
               threshold: float = 0.5) -> jax.Array:
    check_image(image)
    check_prob("p", p)
    return jnp.where(u[0] < p, jnp.where(image >= threshold, 1.0 - image, image), image)


# -------------------------------------------------------------------------- blur
def gaussian_blur(key: jax.Array, image: jax.Array, sigma: Sequence[float] = (0.1, 2.0),
                  p: float = 0.5, kernel_size: int | None = None) -> jax.Array:
    """With probability p blur with sigma ~ U(sigma); kernel_size defaults to ~10% of H."""
    return gaussian_blur_u(jax.random.uniform(key, (N_BLUR,)), image, sigma, p, kernel_size)


def gaussian_blur_u(u: jax.Array, image: jax.Array, sigma: Sequence[float] = (0.1, 2.0),
                    p: float = 0.5, kernel_size: int | None = None) -> jax.Array:
    check_image(image)
    check_prob("p", p)
    check_interval("sigma", sigma, 0.0, math.inf)
    if kernel_size is None:
        kernel_size = default_blur_kernel_size(min(image.shape[:2]))
    return jnp.where(u[0] < p, blur_image(image, _lerp(u[1], *sigma), kernel_size), image)
