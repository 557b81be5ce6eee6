"""Deterministic pixel transforms: colour spaces, colour adjustments, Gaussian blur.

Images are float [..., C] in [0, 1]; the 3x3 colour transforms are written as explicit
multiply-adds, so they stay exact float32 on accelerators whose default matmul precision
is bf16/tf32. Lab is CIE L*a*b* of sRGB (IEC 61966-2-1) with the D65 white point.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R BT.601 luma weights (torchvision uses 0.2989, 0.587, 0.114).
LUMA = (0.299, 0.587, 0.114)
# linear sRGB -> CIE XYZ (D65); the white point is the image of RGB (1, 1, 1), so white
# maps to a* = b* = 0 exactly.
RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
              (0.2126729, 0.7151522, 0.0721750),
              (0.0193339, 0.1191920, 0.9503041))
XYZ_TO_RGB = tuple(map(tuple, np.linalg.inv(np.asarray(RGB_TO_XYZ, np.float64)).tolist()))
WHITE_D65 = tuple(float(sum(row)) for row in RGB_TO_XYZ)
_DELTA = 6.0 / 29.0


def clip01(image: jax.Array) -> jax.Array:
    return jnp.clip(image, 0.0, 1.0)


def _frac(x: jax.Array) -> jax.Array:
    """x mod 1 as x - floor(x): vectorises on CPU, unlike XLA's remainder (fmod)."""
    return x - jnp.floor(x)


def _mix(image: jax.Array, matrix: Sequence[Sequence[float]]) -> jax.Array:
    """out[..., i] = sum_j matrix[i][j] * image[..., j], as float32 multiply-adds."""
    rows = [sum(w * image[..., j] for j, w in enumerate(row)) for row in matrix]
    return jnp.stack(rows, axis=-1)


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
    """BT.601 luma [H, W, 1]; a 1-channel image is returned as is."""
    if image.shape[-1] == 1:
        return image
    return _mix(image, (LUMA,))


def rgb_to_hsv(image: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV with hue in [0, 1) (torchvision's formula)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    # elementwise max/min of the 3 planes: a reduce over a minor axis of 3 is slow on CPU
    maxc, minc = jnp.maximum(jnp.maximum(r, g), b), jnp.minimum(jnp.minimum(r, g), b)
    eq = maxc == minc
    cr = maxc - minc
    s = cr / jnp.where(eq, 1.0, maxc)
    div = jnp.where(eq, 1.0, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(eq, 0.0, _frac(h / 6.0 + 1.0))
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """Inverse of :func:`rgb_to_hsv`."""
    # Branch-free form: channel n in (R, G, B) = v - v s clip(min(k, 4 - k), 0, 1) with
    # k = (n + 6 h) mod 6 and n = 5, 3, 1 (same values as the 6-sector table).
    h6, s, v = 6.0 * hsv[..., 0], hsv[..., 1], hsv[..., 2]

    def channel(n):
        k = n + h6
        k = jnp.where(k >= 6.0, k - 6.0, k)  # h in [0, 1]: one wrap suffices, no fmod
        return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_brightness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """clip(image * factor), torchvision's adjust_brightness."""
    return clip01(image * factor)


def adjust_contrast(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Blend with the mean grey level: clip(f * image + (1 - f) * mean(luma))."""
    return clip01(factor * image + (1.0 - factor) * mean_luma(image))


def mean_luma(image: jax.Array) -> jax.Array:
    """Mean luma of [H, W, C] as sum_c LUMA_c * mean(channel c): one reduction to [C]
    runs ~4x faster on CPU than a reduction over the [H, W, 1] luma."""
    means = jnp.mean(image, axis=(0, 1))
    return means[0] if image.shape[-1] == 1 else sum(w * means[i] for i, w in enumerate(LUMA))


def adjust_saturation(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Blend with the per-pixel luma: clip(f * image + (1 - f) * luma). No-op for C=1."""
    if image.shape[-1] == 1:
        return image
    return clip01(factor * image + (1.0 - factor) * rgb_to_grayscale(image))


def adjust_hue(image: jax.Array, delta: jax.Array | float) -> jax.Array:
    """Rotate hue by ``delta`` (in turns, [-0.5, 0.5]) through HSV. No-op for C=1."""
    if image.shape[-1] == 1:
        return image
    hsv = rgb_to_hsv(image)
    h = _frac(hsv[..., 0] + delta)
    return clip01(hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1)))


def rgb_to_lab(image: jax.Array) -> jax.Array:
    """sRGB [..., 3] in [0, 1] -> CIE Lab (L in [0, 100], a/b roughly in [-110, 110])."""
    lin = jnp.where(image <= 0.04045, image / 12.92,
                    jnp.power((jnp.maximum(image, 0.04045) + 0.055) / 1.055, 2.4))
    xyz = _mix(lin, RGB_TO_XYZ) / jnp.asarray(WHITE_D65, image.dtype)
    f = jnp.where(xyz > _DELTA ** 3, jnp.cbrt(jnp.maximum(xyz, _DELTA ** 3)),
                  xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
    """Inverse of :func:`rgb_to_lab`; colours outside the sRGB gamut are clipped to [0, 1]."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = jnp.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = jnp.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0))
    lin = _mix(xyz * jnp.asarray(WHITE_D65, lab.dtype), XYZ_TO_RGB)
    srgb = jnp.where(lin <= 0.0031308, 12.92 * lin,
                     1.055 * jnp.power(jnp.maximum(lin, 0.0031308), 1 / 2.4) - 0.055)
    return clip01(srgb)


def default_blur_kernel_size(size: int) -> int:
    """SimCLR's rule: ~10% of the image side, odd, at least 3 (224 -> 23, 32 -> 3)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def gaussian_kernel1d(sigma: jax.Array | float, kernel_size: int) -> jax.Array:
    """exp(-x^2 / (2 sigma^2)) at x = -(k-1)/2 .. (k-1)/2, normalised to sum 1."""
    x = jnp.arange(kernel_size, dtype=jnp.float32) - (kernel_size - 1) / 2.0
    w = jnp.exp(-0.5 * jnp.square(x / sigma))
    return w / jnp.sum(w)


def blur_image(image: jax.Array, sigma: jax.Array | float, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur with reflect padding (torchvision's GaussianBlur)."""
    h, w = image.shape[:2]
    if kernel_size < 1 or kernel_size % 2 == 0 or kernel_size // 2 >= min(h, w):
        raise ValueError(f"kernel_size must be odd, >= 1 and < 2*min(H, W)={2 * min(h, w)}, "
                         f"got {kernel_size} for a {h}x{w} image")
    k = gaussian_kernel1d(sigma, kernel_size)
    r = kernel_size // 2
    x = _taps(jnp.pad(image, ((r, r), (0, 0), (0, 0)), mode="reflect"), k, 0, h)
    x = jnp.pad(x, ((0, 0), (r, r), (0, 0)), mode="reflect")  # x: the loop's output,
    x = sum(k[i] * x[:, i:i + w] for i in range(kernel_size))  # so one fused pass is fine
    return clip01(x)


def _taps(x: jax.Array, k: jax.Array, axis: int, n: int) -> jax.Array:
    """sum_i k[i] * x[i:i + n] along ``axis``. A fori_loop, not an unrolled sum: the loop
    operand is materialised, whereas XLA fuses an unrolled stencil with its producers and
    recomputes them once per tap (hue x 9, or the vertical pass x 23 at 224 px)."""
    def body(i, acc):
        return acc + k[i] * jax.lax.dynamic_slice_in_dim(x, i, n, axis)
    zeros = jnp.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype)
    return jax.lax.fori_loop(0, k.shape[0], body, zeros)
