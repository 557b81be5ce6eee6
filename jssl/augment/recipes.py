"""Multi-view recipes of SimCLR, BYOL, MoCo v2 and DINO, batched and jittable.

``recipe(key, images[B, H, W, C]) -> views`` with images float32 in [0, 1]. Each view is
RandomResizedCrop -> flip -> colour jitter -> grayscale -> blur -> solarize, one key per
example and per view; outputs stay in [0, 1] (normalise afterwards with ``ops.normalize``).
Parameters live in frozen dataclasses so configs can override them with
``dataclasses.replace``. Views that differ only in their probabilities (BYOL's two views,
DINO's globals, DINO's locals) are vmapped over a view axis with the probabilities as
arrays, so XLA compiles one pipeline per group instead of one per view.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jssl.augment import ops

Pair = tuple[float, float]
_PROBS = ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p")
_SIZES = (ops.N_CROP, ops.N_FLIP, ops.N_JITTER, ops.N_GRAY, ops.N_BLUR, ops.N_SOLARIZE)
NUM_UNIFORMS = sum(_SIZES)


@dataclass(frozen=True)
class ViewParams:
    """One view's pipeline. An op whose probability is 0 is not traced at all."""

    scale: Pair = (0.08, 1.0)
    ratio: Pair = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: Pair = (0.1, 2.0)
    blur_kernel_size: int | None = None  # None: ~10% of the view size (SimCLR)
    solarize_p: float = 0.0

    def __post_init__(self):
        for name in ("scale", "ratio", "blur_sigma"):  # lists from configs -> hashable tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        ops.check_interval("scale", self.scale, 0.0, 1.0)
        ops.check_interval("ratio", self.ratio, 0.0, float("inf"))
        ops.check_interval("blur_sigma", self.blur_sigma, 0.0, float("inf"))
        for name in _PROBS:
            ops.check_prob(name, getattr(self, name))


def make_view(key: jax.Array, image: jax.Array, out_size: int | Sequence[int],
              vp: ViewParams) -> jax.Array:
    """One augmented view of one image [H, W, C] (vmap it, or use :func:`make_views`)."""
    return view_u(jax.random.uniform(key, (NUM_UNIFORMS,)), image, out_size, vp)


def view_u(u: jax.Array, image: jax.Array, out_size: int | Sequence[int], vp: ViewParams,
           probs: jax.Array | None = None) -> jax.Array:
    """:func:`make_view` from NUM_UNIFORMS uniforms in [0, 1).

    ``probs`` (optional, may be traced) overrides the five probabilities in ``_PROBS``
    order; an op is traced only when its probability in ``vp`` is > 0.
    """
    p = dict(zip(_PROBS, probs if probs is not None else [getattr(vp, n) for n in _PROBS],
                 strict=True))
    u = jnp.split(u, np.cumsum(_SIZES)[:-1].tolist())
    x = ops.random_resized_crop_u(u[0], image, out_size, vp.scale, vp.ratio)
    if vp.flip_p > 0:
        x = ops.horizontal_flip_u(u[1], x, p["flip_p"])
    if vp.jitter_p > 0:
        x = ops.color_jitter_u(u[2], x, vp.brightness, vp.contrast, vp.saturation, vp.hue,
                               p["jitter_p"])
    if vp.grayscale_p > 0:
        x = ops.random_grayscale_u(u[3], x, p["grayscale_p"])
    if vp.blur_p > 0:
        x = ops.gaussian_blur_u(u[4], x, vp.blur_sigma, p["blur_p"], vp.blur_kernel_size)
    if vp.solarize_p > 0:
        x = ops.solarize_u(u[5], x, p["solarize_p"])
    return x


def make_views(key: jax.Array, images: jax.Array,
               views: Sequence[tuple[ViewParams, int | Sequence[int]]]) -> list[jax.Array]:
    """One augmented batch [B, h, w, C] per (ViewParams, out_size) in ``views``.

    The randomness is ONE draw ``uniform(key, (V, B, NUM_UNIFORMS))``: row (v, b) drives
    view v of example b (a threefry call costs ~1 s of XLA compile on CPU, so a recipe has
    exactly one).
    """
    if jnp.ndim(images) != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in {{1, 3}}, got shape "
                         f"{tuple(jnp.shape(images))}; add a batch axis with images[None]")
    sizes = [ops.out_hw(size) for _, size in views]
    views = [vp for vp, _ in views]
    u_all = jax.random.uniform(key, (len(views), images.shape[0], NUM_UNIFORMS))
    out: list[jax.Array | None] = [None] * len(views)
    groups: dict[tuple, list[int]] = {}
    for i, vp in enumerate(views):  # group views that differ only in their probabilities
        static = dataclasses.replace(vp, **{n: max(getattr(v, n) for v in views
                                                   if _same_ops(v, vp)) for n in _PROBS})
        groups.setdefault((static, sizes[i]), []).append(i)
    for (static, size), idx in groups.items():
        probs = jnp.asarray([[getattr(views[i], n) for n in _PROBS] for i in idx], jnp.float32)

        def one_view(u, pr, static=static, size=size):
            return jax.vmap(lambda ub, im: view_u(ub, im, size, static, pr))(u, images)

        stacked = jax.vmap(one_view)(u_all[jnp.asarray(idx)], probs)
        for j, i in enumerate(idx):
            out[i] = stacked[j]
    return out


def _same_ops(a: ViewParams, b: ViewParams) -> bool:
    zero = dict.fromkeys(_PROBS, 0.0)
    return dataclasses.replace(a, **zero) == dataclasses.replace(b, **zero)


# ----------------------------------------------------------------------------- SimCLR
@dataclass(frozen=True)
class SimCLRParams:
    """SimCLR (Chen et al. 2020, App. A): jitter (0.8, 0.8, 0.8, 0.2) * strength, p 0.8.

    ``blur=False`` drops the blur, as SimCLR does on CIFAR-10.
    """

    strength: float = 1.0
    blur: bool = True
    scale: Pair = (0.08, 1.0)
    ratio: Pair = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: Pair = (0.1, 2.0)

    def views(self) -> tuple[ViewParams, ViewParams]:
        s = self.strength
        vp = ViewParams(self.scale, self.ratio, 0.5, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s,
                        self.jitter_p, self.grayscale_p, self.blur_p if self.blur else 0.0,
                        self.blur_sigma)
        return vp, vp


def simclr_views(key: jax.Array, images: jax.Array, out_size: int | Sequence[int],
                 strength: float = 1.0, blur: bool = True,
                 params: SimCLRParams | None = None) -> tuple[jax.Array, jax.Array]:
    """Two SimCLR views of images [B, H, W, C]; ``params`` (if given) wins over the rest."""
    params = params or SimCLRParams(strength=strength, blur=blur)
    return tuple(make_views(key, images, [(vp, out_size) for vp in params.views()]))


# ------------------------------------------------------------------------------- BYOL
@dataclass(frozen=True)
class BYOLParams:
    """BYOL (Grill et al. 2020, Table 6): asymmetric blur (1.0, 0.1) and solarize (0, 0.2)."""

    scale: Pair = (0.08, 1.0)
    ratio: Pair = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: Pair = (1.0, 0.1)
    blur_sigma: Pair = (0.1, 2.0)
    solarize_p: Pair = (0.0, 0.2)

    def views(self) -> tuple[ViewParams, ViewParams]:
        return tuple(
            ViewParams(self.scale, self.ratio, 0.5, *self.jitter, self.jitter_p,
                       self.grayscale_p, self.blur_p[i], self.blur_sigma,
                       solarize_p=self.solarize_p[i]) for i in range(2))


def byol_views(key: jax.Array, images: jax.Array, out_size: int | Sequence[int],
               params: BYOLParams | None = None) -> tuple[jax.Array, jax.Array]:
    """The two asymmetric BYOL views of images [B, H, W, C]."""
    params = params or BYOLParams()
    return tuple(make_views(key, images, [(vp, out_size) for vp in params.views()]))


# ---------------------------------------------------------------------------- MoCo v2
@dataclass(frozen=True)
class MoCoV2Params:
    """MoCo v2 (Chen et al. 2020, official main_moco.py --aug-plus): crop scale (0.2, 1),
    jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, flip."""

    scale: Pair = (0.2, 1.0)
    ratio: Pair = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: Pair = (0.1, 2.0)

    def views(self) -> tuple[ViewParams, ViewParams]:
        vp = ViewParams(self.scale, self.ratio, 0.5, *self.jitter, self.jitter_p,
                        self.grayscale_p, self.blur_p, self.blur_sigma)
        return vp, vp


def mocov2_views(key: jax.Array, images: jax.Array, out_size: int | Sequence[int],
                 params: MoCoV2Params | None = None) -> tuple[jax.Array, jax.Array]:
    """Query and key views of images [B, H, W, C] (MoCo v2 augmentation)."""
    params = params or MoCoV2Params()
    return tuple(make_views(key, images, [(vp, out_size) for vp in params.views()]))


# ------------------------------------------------------------------------------- DINO
@dataclass(frozen=True)
class DINOParams:
    """DINO (Caron et al. 2021, main_dino.py DataAugmentationDINO): global views blur
    (1.0, 0.1) and solarize (0, 0.2); local views blur 0.5, no solarize."""

    global_scale: Pair = (0.4, 1.0)
    local_scale: Pair = (0.05, 0.4)
    ratio: Pair = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    global_blur_p: Pair = (1.0, 0.1)
    global_solarize_p: Pair = (0.0, 0.2)
    local_blur_p: float = 0.5
    blur_sigma: Pair = (0.1, 2.0)

    def _view(self, scale: Pair, blur_p: float, solarize_p: float) -> ViewParams:
        return ViewParams(scale, self.ratio, 0.5, *self.jitter, self.jitter_p,
                          self.grayscale_p, blur_p, self.blur_sigma, solarize_p=solarize_p)

    def global_views(self) -> tuple[ViewParams, ViewParams]:
        return tuple(self._view(self.global_scale, self.global_blur_p[i],
                                self.global_solarize_p[i]) for i in range(2))

    def local_view(self) -> ViewParams:
        return self._view(self.local_scale, self.local_blur_p, 0.0)


def dino_multicrop(key: jax.Array, images: jax.Array, global_size: int | Sequence[int],
                   local_size: int | Sequence[int], num_local: int,
                   global_scale: Pair = (0.4, 1.0), local_scale: Pair = (0.05, 0.4),
                   params: DINOParams | None = None) -> tuple[list[jax.Array], list[jax.Array]]:
    """(2 global views [B, G, G, C], ``num_local`` local views [B, L, L, C]).

    ``params`` (if given) wins over ``global_scale``/``local_scale``.
    """
    if num_local < 0:
        raise ValueError(f"num_local must be >= 0, got {num_local}")
    params = params or DINOParams(global_scale=global_scale, local_scale=local_scale)
    views = ([(vp, global_size) for vp in params.global_views()]
             + [(params.local_view(), local_size)] * num_local)
    out = make_views(key, images, views)
    return out[:2], out[2:]
