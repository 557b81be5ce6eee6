"""A drop-in ``flax.linen.Conv`` (2-D, NHWC) whose gradients are fast on XLA:CPU.

The forward is XLA's own convolution. ``impl="fast"`` changes how the input gradient of
strided layers is formulated, ``impl="fast_chunked_dw"`` also the kernel gradient of
high-resolution layers; on CPU only, where XLA:CPU is measured slow
(``docs/performance.md``); every other layer, and every GPU/TPU layer, keeps XLA's
gradients. With x the input, dY the output cotangent, stride s, padding p and a k×k kernel:

* Input gradient of a strided layer (``"fast"`` and ``"fast_chunked_dw"``). XLA
  convolves a zero-dilated dY (s − 1 zeros between rows and columns) with the whole
  kernel, about s² times the multiply-adds that matter. Here (:func:`phase_input_grad`)
  each of the s² phases of dX (rows ≡ p, columns ≡ t mod s) is a stride-1 convolution of
  dY with the taps of its phase, and the phases are interleaved. Rule
  (:func:`use_phase_dx`): stride > 1 and a padded input side divisible by the stride.
* Kernel gradient (``"fast_chunked_dw"`` only),
  dW[i, j, c, d] = Σ_{n, h, w} x_pad[n, s·h + i, s·w + j, c] · dY[n, h, w, d].
  XLA:CPU evaluates it as a convolution over the batch and spatial axes, slow for
  high-resolution, few-channel layers (the 28×28 stages of the CPU ResNets: 2.5-5× the
  forward). Here it is a ``lax.scan`` over chunks of ``CHUNK`` images, each an im2col
  matmul dW += P_chunkᵀ · dY_chunk (P_chunk = [chunk·H'·W', k·k·C_in], the k·k shifted
  inputs), whose operands stay in cache. Rule (:func:`use_chunked_dw`): stride 1, output
  side ≥ ``MIN_SIDE``, C_in·C_out ≤ ``MAX_CHANNEL_PRODUCT``. It wins per layer in
  isolation, but not in the whole CPU updates since jssl's XLA flag and tcmalloc, hence
  not part of ``"fast"``.

* The input itself, on CPU (``"fast"`` and ``"fast_chunked_dw"``): :func:`materialised`.
  XLA:CPU hands the kernel gradient to Eigen with x transposed to [C_in, H, W, N], and its
  instruction fusion duplicates the cheap elementwise chain that produced x (BatchNorm apply,
  ReLU, a residual sum) into that transposing copy, which then re-reads the chain's inputs
  at the transposed stride (~3× the time of transposing the stored x; docs/performance.md).
  ``materialised(x)`` is x computed as x / (x·0 + 1): a division is "expensive" to XLA's
  fusion, so the chain ends in one materialised buffer that both the forward convolution
  and the transposing copy read; the divisor is a full-shape value, so the simplifier cannot
  turn the division into a product with a broadcast reciprocal. Bitwise x for finite
  normal x; subnormals (|x| < 1.2e-38) become ±0 (XLA:CPU flushes them in the division)
  and ±inf becomes NaN; its gradient is the identity.

Both give the same sums up to float reassociation (tests/test_models_conv.py checks outputs
and both gradients against ``nn.Conv`` and a float64 NumPy kernel gradient). Params
(``kernel`` [kh, kw, C_in, C_out], ``bias`` [C_out]), their init and dtype handling are
``nn.Conv``'s, so checkpoints are interchangeable.
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
IMPLS = ("xla", "fast", "fast_chunked_dw")
CHUNK = 8  # images per scan step of the chunked kernel gradient
MIN_SIDE = 24  # measured: chunked wins at output side 28, loses at 14 (threshold between)
MAX_CHANNEL_PRODUCT = 64 * 64  # largest C_in·C_out for which it wins


def use_chunked_dw(out_side: int, strides: tuple[int, int], cin: int, cout: int,
                   platform: str | None = None) -> bool:
    """Whether ``impl="fast_chunked_dw"`` computes this kernel gradient by chunked im2col: on
    CPU only (``platform``, default ``jax.default_backend()``; GPU/TPU convolutions keep
    their own), for stride 1, output side >= MIN_SIDE, C_in·C_out <= MAX_CHANNEL_PRODUCT."""
    platform = platform or jax.default_backend()
    return (platform == "cpu" and strides == (1, 1) and out_side >= MIN_SIDE
            and cin * cout <= MAX_CHANNEL_PRODUCT)


def use_phase_dx(in_hw: tuple[int, int], strides: tuple[int, int], pads: Pads,
                 platform: str | None = None) -> bool:
    """Whether ``impl="fast"`` computes this layer's input gradient by
    :func:`phase_input_grad`: on CPU only, for a strided layer (stride > 1 on some axis)
    whose padded input side is a multiple of the stride on both axes (every phase then has
    the same number of rows; measured slower than XLA's for the odd 7×7 -> 4×4 layers)."""
    platform = platform or jax.default_backend()
    sides = zip(in_hw, pads, strides, strict=True)
    return (platform == "cpu" and max(strides) > 1
            and all((n + lo + hi) % s == 0 for n, (lo, hi), s in sides))


def phase_input_grad(dy: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads,
                     in_hw: tuple[int, int]) -> jax.Array:
    """dX of a strided convolution as sh·sw stride-1 convolutions of dY, one per phase.

    With x_pad the padded input, the forward is y[h, w] = Σ_{i,j} x_pad[s·h + i, s·w + j]·W[i, j],
    so the rows of dX_pad with index ≡ p (mod s) receive only the taps i ≡ p (mod s):

        dX_pad[s·q + p, s·r + t] = Σ_{u,v} dY[q − u, r − v] · W[p + s·u, t + s·v]ᵀ,

    a stride-1 convolution of dY with the sub-kernel W[p::s, t::s] (flipped, C_in/C_out
    swapped). The phases are interleaved and the padding cropped. Same products as XLA's
    gradient, which instead convolves a zero-dilated dY with the whole kernel (about s² times
    the multiply-adds on XLA:CPU)."""
    (sh, sw), n, cin = strides, dy.shape[0], kernel.shape[2]
    (ho, wo) = dy.shape[1:3]
    qh = (in_hw[0] + sum(pads[0])) // sh
    qw = (in_hw[1] + sum(pads[1])) // sw
    rows = []
    for p in range(sh):
        cols = []
        for t in range(sw):
            sub = kernel[p::sh, t::sw]  # [taps_h, taps_w, C_in, C_out]
            th, tw = sub.shape[:2]
            if th == 0 or tw == 0:  # stride larger than the kernel: this phase gets nothing
                cols.append(jnp.zeros((n, qh, qw, cin), dy.dtype))
                continue
            flipped = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
            cols.append(lax.conv_general_dilated(
                dy, flipped, (1, 1), ((th - 1, qh - ho), (tw - 1, qw - wo)),
                dimension_numbers=DIMENSION_NUMBERS))
        rows.append(jnp.stack(cols, axis=3))  # [n, qh, qw, sw, C_in]
    full = jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, cin)
    return full[:, pads[0][0]:pads[0][0] + in_hw[0], pads[1][0]:pads[1][0] + in_hw[1]]


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


#: whether ``"fast"`` / ``"fast_chunked_dw"`` pass the input through :func:`materialised` on
#: CPU (read at trace time; bench/conv_materialise.py switches it to measure both)
MATERIALISE_INPUT = True


@jax.custom_vjp
def materialised(x: jax.Array) -> jax.Array:
    """``x``, computed as ``x / (x·0 + 1)`` so that XLA:CPU stores it once instead of fusing
    its producers into every consumer (see the module docstring); identity gradient."""
    return x / (x * 0 + 1)


def _materialised_fwd(x):
    return materialised(x), None


def _materialised_bwd(_, g):
    return (g,)


materialised.defvjp(_materialised_fwd, _materialised_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads,
           chunked_dw: bool = False) -> jax.Array:
    """y = conv(x, kernel), NHWC × HWIO -> NHWC, explicit pads; XLA forward; input gradient
    by :func:`phase_input_grad` where :func:`use_phase_dx`; kernel gradient, if
    ``chunked_dw``, by :func:`chunked_kernel_grad` where :func:`use_chunked_dw`; XLA's
    elsewhere."""
    return _xla_conv(x, kernel, strides, pads)


def _conv2d_fwd(x, kernel, strides, pads, chunked_dw):
    return _xla_conv(x, kernel, strides, pads), (x, kernel)


def _conv2d_bwd(strides, pads, chunked_dw, res, dy):
    x, kernel = res
    if use_phase_dx(x.shape[1:3], strides, pads):
        dx = phase_input_grad(dy, kernel, strides, pads, x.shape[1:3]).astype(x.dtype)
    else:
        (dx,) = jax.vjp(lambda x_: _xla_conv(x_, kernel, strides, pads), x)[1](dy)
    kh, kw, cin, cout = kernel.shape
    if chunked_dw and use_chunked_dw(min(dy.shape[1:3]), strides, cin, cout):
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
    ``"xla"`` (the plain XLA convolution and its autodiff), ``"fast"`` (:func:`conv2d`:
    the phase input gradient; on CPU the input stored once, :func:`materialised`) or
    ``"fast_chunked_dw"`` (also the chunked kernel gradient).
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
        if self.impl == "xla":
            y = _xla_conv(x, kernel, strides, pads)
        else:
            if MATERIALISE_INPUT and jax.default_backend() == "cpu":
                x = materialised(x)
            y = conv2d(x, kernel, strides, pads, self.impl == "fast_chunked_dw")
        return y if bias is None else y + bias
