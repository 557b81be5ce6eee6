"""A drop-in ``flax.linen.Conv`` (2-D, NHWC) whose weight gradient is fast on XLA:CPU.

The forward and the input gradient are XLA's own convolutions. Only the kernel gradient
changes formulation: with x the input, dY the output cotangent, stride s, padding p and a
k×k kernel,

    dW[i, j, c, d] = Σ_{n, h, w} x_pad[n, s·h + i, s·w + j, c] · dY[n, h, w, d]

which XLA:CPU evaluates as a convolution over the batch and spatial axes — slow for
high-resolution, few-channel layers (the 28×28 stages of the CPU ResNets: 2.5-5× the
forward). ``impl="fast"`` computes the same sum (on CPU) as a ``lax.scan`` over chunks of
``CHUNK`` images, each an im2col matmul

    dW += P_chunkᵀ · dY_chunk,   P_chunk = [chunk·H'·W', k·k·C_in] (the k·k shifted inputs),

whose operands stay in cache. The rule (:func:`use_chunked_dw`, from measurements in
``docs/performance.md``): the CPU backend, stride 1, output side ≥ ``MIN_SIDE`` and
C_in·C_out ≤ ``MAX_CHANNEL_PRODUCT``; every other layer (and every GPU/TPU layer) keeps
XLA's kernel gradient. Both give the same
sum up to float reassociation (tests/test_models_conv.py checks outputs and both gradients
against ``nn.Conv``). Params (``kernel`` [kh, kw, C_in, C_out], ``bias`` [C_out]), their
init and dtype handling are ``nn.Conv``'s, so checkpoints are interchangeable.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("xla", "fast")
CHUNK = 8  # images per scan step of the chunked kernel gradient
MIN_SIDE = 24  # measured: chunked wins at output side 28, loses at 14 (threshold between)
MAX_CHANNEL_PRODUCT = 64 * 64  # largest C_in·C_out for which it wins


def use_chunked_dw(out_side: int, strides: tuple[int, int], cin: int, cout: int,
                   platform: str | None = None) -> bool:
    """Whether ``impl="fast"`` computes this layer's kernel gradient by chunked im2col: on
    CPU only (``platform``, default ``jax.default_backend()``; GPU/TPU convolutions keep
    their own), for stride 1, output side >= MIN_SIDE, C_in·C_out <= MAX_CHANNEL_PRODUCT."""
    platform = platform or jax.default_backend()
    return (platform == "cpu" and strides == (1, 1) and out_side >= MIN_SIDE
            and cin * cout <= MAX_CHANNEL_PRODUCT)


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads):
    return lax.conv_general_dilated(x, kernel, strides, pads,
                                    dimension_numbers=DIMENSION_NUMBERS)


def _patches(x: jax.Array, ksize: tuple[int, int], strides: tuple[int, int], pads: Pads,
             out_hw: tuple[int, int]) -> jax.Array:
    """im2col: [n, H, W, C] -> [n·H'·W', kh·kw·C], columns ordered (i, j, c) as HWIO."""
    (sh, sw), (oh, ow) = strides, out_hw
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    taps = [xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            for i in range(ksize[0]) for j in range(ksize[1])]
    return jnp.concatenate(taps, axis=-1).reshape(-1, ksize[0] * ksize[1] * x.shape[-1])


def chunked_kernel_grad(x: jax.Array, dy: jax.Array, ksize: tuple[int, int],
                        strides: tuple[int, int], pads: Pads) -> jax.Array:
    """dW = Σ over chunks of ``CHUNK`` images of P_chunkᵀ · dY_chunk, accumulated in float32;
    [kh, kw, C_in, C_out] in x's dtype. The chunk is the largest divisor of the batch ≤ CHUNK."""
    n, cin, cout = x.shape[0], x.shape[-1], dy.shape[-1]
    chunk = max(c for c in range(1, min(CHUNK, n) + 1) if n % c == 0)
    xs = x.reshape(n // chunk, chunk, *x.shape[1:])
    dys = dy.reshape(n // chunk, chunk, *dy.shape[1:])

    def body(acc, xd):
        xc, dc = xd
        p = _patches(xc, ksize, strides, pads, dy.shape[1:3])
        return acc + lax.dot_general(p, dc.reshape(-1, cout), (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32), None

    acc, _ = lax.scan(body, jnp.zeros((math.prod(ksize) * cin, cout), jnp.float32), (xs, dys))
    return acc.reshape(*ksize, cin, cout).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    """y = conv(x, kernel), NHWC × HWIO -> NHWC, explicit pads; XLA forward and input
    gradient, kernel gradient by :func:`chunked_kernel_grad` where :func:`use_chunked_dw`."""
    return _xla_conv(x, kernel, strides, pads)


def _conv2d_fwd(x, kernel, strides, pads):
    return _xla_conv(x, kernel, strides, pads), (x, kernel)


def _conv2d_bwd(strides, pads, res, dy):
    x, kernel = res
    (dx,) = jax.vjp(lambda x_: _xla_conv(x_, kernel, strides, pads), x)[1](dy)
    kh, kw, cin, cout = kernel.shape
    if use_chunked_dw(min(dy.shape[1:3]), strides, cin, cout):
        dw = chunked_kernel_grad(x, dy, (kh, kw), strides, pads).astype(kernel.dtype)
    else:
        (dw,) = jax.vjp(lambda w: _xla_conv(x, w, strides, pads), kernel)[1](dy)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(a, int) and a >= 1 for a in t):
        raise ValueError(f"Conv {name}={v!r}: give an int >= 1 or a pair of them (2-D only)")
    return t


def explicit_pads(padding: Any, in_hw: tuple[int, int], ksize: tuple[int, int],
                  strides: tuple[int, int]) -> Pads:
    """``nn.Conv``'s padding forms ('SAME', 'VALID', int, [int | (lo, hi)] × 2) as pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"Conv padding={padding!r}: use 'SAME', 'VALID', an int or "
                             f"((lo, hi), (lo, hi)); 'CIRCULAR' etc. need flax.linen.Conv")
        return tuple(lax.padtype_to_pads(in_hw, ksize, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"Conv padding={padding!r}: give two entries (H, W), each an int "
                         f"or a (lo, hi) pair")
    return pads


class Conv(nn.Module):
    """2-D convolution, NHWC, with ``nn.Conv``'s params, init and dtype rules.

    Attributes as ``nn.Conv`` (``features``, ``kernel_size``, ``strides``, ``padding``,
    ``use_bias``, ``dtype``, ``param_dtype``, ``kernel_init``, ``bias_init``), plus ``impl``:
    ``"xla"`` (the plain XLA convolution and its autodiff) or ``"fast"`` (:func:`conv2d`).
    No dilation, groups or masks (use ``nn.Conv`` for those).
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    impl: str = "fast"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl not in IMPLS:
            raise ValueError(f"Conv impl={self.impl!r}: use one of {IMPLS}")
        if x.ndim != 4:
            raise ValueError(f"Conv input of shape {x.shape}: expected NHWC [B, H, W, C]")
        ksize, strides = _pair(self.kernel_size, "kernel_size"), _pair(self.strides, "strides")
        pads = explicit_pads(self.padding, x.shape[1:3], ksize, strides)
        kernel = self.param("kernel", self.kernel_init, (*ksize, x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = (conv2d if self.impl == "fast" else _xla_conv)(x, kernel, strides, pads)
        return y if bias is None else y + bias
