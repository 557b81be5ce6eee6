"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

The SSL flavour used by MoCo v3, DINO, MAE and I-JEPA: pre-norm blocks (LayerNorm -> MHSA,
LayerNorm -> GELU MLP), an optional cls token, and either fixed 2-D sin-cos positions
(MAE / MoCo v3) or learned ones. Dropout and stochastic depth (DropPath, linearly increasing
with depth) are optional; both draw from the ``"dropout"`` RNG stream when ``train=True``.

``keep_ids`` runs the encoder on a subset of patch tokens (positions are added before the
subset is taken), which is what MAE (visible patches only) and I-JEPA (context block) need.

The layout helpers ``patchify``/``unpatchify`` (MAE's ``[B, L, p*p*C]`` layout) and the
position embeddings live in :mod:`jssl.models.patches` and are re-exported here.

Params are float32; computation runs in ``dtype``; outputs are in ``dtype``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models import head_major, native_attention
from jssl.models.activations import gelu
from jssl.models.dense import dense_dot_general
from jssl.models.dropout import Dropout
from jssl.models.patches import (  # noqa: F401  (unpatchify: re-exported)
    interpolate_pos_embed,
    patchify,
    sincos_2d_pos_embed,
    unpatchify,
)

Dtype = Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=4, dim=32, depth=2, num_heads=2),
    "ti16": dict(patch_size=16, dim=192, depth=12, num_heads=3),
    "s16": dict(patch_size=16, dim=384, depth=12, num_heads=6),
    "b16": dict(patch_size=16, dim=768, depth=12, num_heads=12),
    "l16": dict(patch_size=16, dim=1024, depth=24, num_heads=16),
}

_DENSE_INIT = nn.initializers.xavier_uniform()
ATTENTION_IMPLS = ("xla", "cudnn")


#: token counts are padded to a multiple of this for the cuDNN kernel (see padded_attention):
#: 8 pads MAE ViT-B/16's 197 decoder tokens to 200 and its 50 encoder tokens to 56 (64 padded
#: them to 256 and 64; on an H200 the update went 190.0 → 187.6 ms, bench/gpu_mfu_ab.json)
CUDNN_SEQ_MULTIPLE = 8


#: True: the cuDNN path pads the token sequence once, before the blocks, to a multiple of
#: ``CUDNN_SEQ_MULTIPLE`` (:func:`sequence_padding`), instead of padding q, k, v and slicing
#: the output in every block (``padded_attention``). Off until measured on a GPU (the H200
#: profile put ~16 ms of MAE's 188 ms update in those per-block copies); an A/B switch.
PAD_SEQUENCE_ONCE = False
#: the attention kernels for which :func:`sequence_padding` pads (tests add "xla")
SEQUENCE_PAD_IMPLS: tuple[str, ...] = ("cudnn",)


def sequence_padding(impl: str, tokens: int) -> int:
    """How many tokens to append before a stack of :class:`Block` s with attention ``impl``
    (0 unless ``PAD_SEQUENCE_ONCE``); the blocks then get ``valid_tokens=tokens``."""
    if not PAD_SEQUENCE_ONCE or impl not in SEQUENCE_PAD_IMPLS:
        return 0
    return (-tokens) % CUDNN_SEQ_MULTIPLE


def run_blocks(blocks: Sequence[nn.Module], x: jnp.ndarray, impl: str, *, train: bool,
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """``x [B, T, D]`` through ``blocks`` in turn; without a ``mask``, padded first by
    :func:`sequence_padding` (the blocks told ``valid_tokens=T``) and sliced back to T."""
    tokens = x.shape[1]
    pad = sequence_padding(impl, tokens) if mask is None else 0
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    for blk in blocks:
        x = blk(x, train=train, mask=mask, valid_tokens=tokens if pad else None)
    return x[:, :tokens]


def attention_fn(impl: str, valid_tokens: int | None = None):
    """The attention kernel of :class:`Block`: ``softmax(q·kᵀ/√d_h)·v`` per head.

    ``"xla"`` is Flax's einsum attention (softmax in float32; on CPU the same operations
    head-major, ``jssl.models.head_major``, or where it applies one fused native kernel,
    ``jssl.models.native_attention``); ``"cudnn"`` is the fused
    flash-attention kernel of cuDNN through ``jax.nn.dot_product_attention`` (same
    parameters and function, GPU only, no attention dropout), tokens padded to a multiple
    of ``CUDNN_SEQ_MULTIPLE`` (``padded_attention``). With ``valid_tokens`` the sequence
    was padded before the blocks (:func:`sequence_padding`): keys past ``valid_tokens``
    are excluded (by length for cuDNN, by a mask for XLA) and nothing is padded here.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention={impl!r} is unknown; use one of {ATTENTION_IMPLS}")
    if impl == "xla":
        base = (native_attention.dot_product_attention if native_attention.enabled()
                else head_major.attention_fn())
        if valid_tokens is None:
            return base

        @functools.wraps(base)
        def masked(query, key, value, mask=None, **kwargs):
            keys = jnp.arange(key.shape[1]) < valid_tokens
            keys = jnp.broadcast_to(keys, (key.shape[0], 1, query.shape[1], key.shape[1]))
            mask = keys if mask is None else jnp.logical_and(mask, keys)
            return base(query, key, value, mask=mask, **kwargs)

        return masked
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention='cudnn' needs a GPU backend, not "
                         f"{jax.default_backend()!r}; use attention='xla'")

    def fused(query, key, value, mask=None, dropout_rate: float = 0.0,
              deterministic: bool = True):
        if dropout_rate > 0.0 and not deterministic:
            raise ValueError(f"attention='cudnn' has no attention dropout (attn_dropout="
                             f"{dropout_rate}); use attention='xla'")
        if mask is not None:
            raise ValueError("attention='cudnn' takes no attention mask here; use "
                             "attention='xla'")
        return fused_attention(query, key, value, valid_tokens)

    return fused


#: the ``"cudnn"`` path runs sequences shorter than this through XLA's attention instead
#: (``jax.nn.dot_product_attention``, softmax in float32; 0: never). An A/B switch: on the
#: H200 profile cuDNN spent 0.74 ms per backward of MAE's 50-token encoder blocks.
CUDNN_MIN_TOKENS = 0


def fused_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                    valid_tokens: int | None = None, implementation: str = "cudnn"
                    ) -> jnp.ndarray:
    """The ``"cudnn"`` kernel of :class:`Block` on ``[B, T, N, H]``: cuDNN with its tokens
    padded (:func:`padded_attention`), or, when the sequence was padded before the blocks,
    with keys past ``valid_tokens`` excluded by length; XLA's kernel for ``T <
    CUDNN_MIN_TOKENS``."""
    impl = "xla" if query.shape[1] < CUDNN_MIN_TOKENS else implementation
    if valid_tokens is not None:
        lengths = jnp.full((query.shape[0],), valid_tokens, jnp.int32)
        return jax.nn.dot_product_attention(query, key, value, query_seq_lengths=lengths,
                                            key_value_seq_lengths=lengths,
                                            implementation=impl)
    if impl == "xla":
        return jax.nn.dot_product_attention(query, key, value, implementation="xla")
    return padded_attention(query, key, value, implementation=impl)


def padded_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, *,
                     multiple: int | None = None, implementation: str = "cudnn"
                     ) -> jnp.ndarray:
    """``jax.nn.dot_product_attention`` on ``[B, T, N, H]`` with T padded to a multiple of
    ``multiple``; the padded keys are excluded through ``key_value_seq_lengths`` (= T), the
    padded query rows are dropped. cuDNN's fused kernel refuses odd lengths in training
    (ViT-B/16's 197 tokens); the result equals the unpadded attention."""
    t = query.shape[1]
    pad = (-t) % (CUDNN_SEQ_MULTIPLE if multiple is None else multiple)
    if not pad:
        return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, widths) for x in (query, key, value))
    lengths = jnp.full((query.shape[0],), t, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return out[:, :t]


def key_padding_mask(valid: jnp.ndarray) -> jnp.ndarray:
    """bool ``[B, 1, T, T]`` attention mask from ``valid [B, T]``: every query may attend to
    the valid keys only (a padding query still attends to them, so no row is all-masked)."""
    return jnp.broadcast_to(valid[:, None, None, :], (valid.shape[0], 1, valid.shape[1],
                                                      valid.shape[1]))


#: False: ``take_tokens(..., distinct=True)`` differentiates as a plain gather (a scatter-add
#: backward); a benchmark's A/B switch
DISTINCT_GATHER_VJP = True
#: the patch embedding as one matmul over ``patchify``'d pixels (True) or a stride-p
#: convolution (False): same params, same sum. None: the matmul on GPU, where cuDNN's
#: convolution of 3-channel 16×16 patches was the slower (MAE ViT-B/16 on an H200: 198.3 →
#: 190.0 ms per update), the convolution elsewhere (CPU: equal or 4 % faster,
#: ``bench/patch_embed.py``). Also a benchmark's A/B switch.
PATCH_EMBED_MATMUL: bool | None = None


def _patch_embed_matmul() -> bool:
    if PATCH_EMBED_MATMUL is None:
        return jax.default_backend() == "gpu"
    return bool(PATCH_EMBED_MATMUL)


def _gather(x: jnp.ndarray, ids: jnp.ndarray, **kwargs: Any) -> jnp.ndarray:
    return jnp.take_along_axis(x, ids[..., None].astype(jnp.int32), axis=1, **kwargs)


def inverse_ids(ids: jnp.ndarray, num_tokens: int) -> jnp.ndarray:
    """``[B, N]`` int32: for each of ``num_tokens`` tokens its slot ``k`` in the distinct
    ``ids [B, K]`` (``ids[b, k] = j``), or ``K`` where token ``j`` is not taken."""
    b, k = ids.shape
    rows = jnp.arange(b)[:, None]
    out = jnp.full((b, num_tokens), k, jnp.int32)
    return out.at[rows, ids].set(jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k)),
                                 unique_indices=True)


@jax.custom_vjp
def _take_distinct(x: jnp.ndarray, ids: jnp.ndarray, inverse: jnp.ndarray) -> jnp.ndarray:
    return _gather(x, ids)


def _take_distinct_fwd(x, ids, inverse):
    return _gather(x, ids), inverse


def _take_distinct_bwd(inverse, dy):
    # each token j receives the one slot that took it, dy[b, inverse[b, j]], or 0
    return _gather(dy, inverse, mode="fill", fill_value=0), None, None


_take_distinct.defvjp(_take_distinct_fwd, _take_distinct_bwd)


def take_tokens(x: jnp.ndarray, ids: jnp.ndarray, *, distinct: bool = False) -> jnp.ndarray:
    """Per-sample gather along the token axis: ``x[b, ids[b, k]]`` -> ``[B, K, D]``.

    ``distinct=True`` promises that each row of ``ids`` holds distinct tokens (MAE's visible
    subset, its un-shuffling permutation). The gradient is then itself a gather,
    ``dx[b, j] = dy[b, inverse[b, j]]`` (0 for tokens not taken; :func:`inverse_ids`), where
    a plain gather's transpose is a scatter-add into zeros (on a GPU, atomic adds). Same
    values: every token receives at most one slot's gradient, so there is no sum to reorder.
    """
    if distinct and DISTINCT_GATHER_VJP:
        return _take_distinct(x, ids.astype(jnp.int32), inverse_ids(ids, x.shape[1]))
    return _gather(x, ids)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p×p`` patches to ``dim`` features, ``[B, H, W, C] -> [B, h, w, dim]``:
    ``x[b, i, j] = Σ_{u,v,c} img[b, i·p+u, j·p+v, c] · kernel[u, v, c] + bias``, computed as
    one ``[B·h·w, p·p·C] · [p·p·C, dim]`` matmul over :func:`patchify`'d pixels. Params as
    ``nn.Conv``'s (``kernel [p, p, C, dim]``, ``bias [dim]``, same initialisers), so a
    checkpoint of either form loads in the other."""

    dim: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        p, c = self.patch_size, images.shape[-1]
        kernel = self.param("kernel", _DENSE_INIT, (p, p, c, self.dim))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.dim,))
        b, h, w = images.shape[0], images.shape[1] // p, images.shape[2] // p
        x = patchify(images.astype(self.dtype), p)
        x = x @ kernel.astype(self.dtype).reshape(p * p * c, self.dim)
        return (x + bias.astype(self.dtype)).reshape(b, h, w, self.dim)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout."""

    hidden_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool) -> jnp.ndarray:
        d = x.shape[-1]
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_DENSE_INIT,
                     dot_general=dense_dot_general, name="fc1")(x)
        x = gelu(x)
        x = Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.Dense(d, dtype=self.dtype, kernel_init=_DENSE_INIT,
                     dot_general=dense_dot_general, name="fc2")(x)
        return Dropout(self.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))``."""

    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False,
                 mask: jnp.ndarray | None = None,
                 valid_tokens: int | None = None) -> jnp.ndarray:
        """``mask``: optional bool ``[B, 1, T, T]`` attention mask (True = may attend);
        ``valid_tokens``: the tokens past this many are padding (keys excluded)."""
        det = not train
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.attn_dropout,
            kernel_init=_DENSE_INIT, force_fp32_for_softmax=True,
            qkv_dot_general=dense_dot_general, out_dot_general=dense_dot_general,
            attention_fn=attention_fn(self.attention, valid_tokens), name="attn")(
                y, y, mask=mask, deterministic=det)
        y = Dropout(self.dropout)(y, deterministic=det)
        x = x + DropPath(self.drop_path)(y, deterministic=det)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.dropout, self.dtype, name="mlp")(
            y, deterministic=det)
        return x + DropPath(self.drop_path)(y, deterministic=det)


class ViT(nn.Module):
    """ViT encoder.

    Attributes:
      patch_size, dim, depth, num_heads, mlp_ratio: architecture.
      pool: ``"cls"`` (cls token output), ``"mean"`` (mean of patch tokens) or ``"none"``
        (``__call__`` returns the token sequence ``[B, (1+)K, dim]``).
      use_cls: prepend a learned cls token (required by ``pool="cls"``).
      pos_embed: ``"sincos"`` (fixed, MAE/MoCo v3) or ``"learned"`` (trunc-normal 0.02).
      interpolate_pos: learned positions are stored for the init grid; images with another
        grid get them bicubically resized (DINO's multi-crop); otherwise they are refused.
      dropout, attn_dropout, drop_path_rate: regularisation (stochastic depth increases
        linearly from 0 to ``drop_path_rate`` over the blocks).
      dtype: computation dtype (params stay float32).
      attention: ``"xla"`` or ``"cudnn"`` (fused flash attention on GPU; see
        :func:`attention_fn`).
    """

    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pool: str = "cls"
    use_cls: bool = True
    pos_embed: str = "sincos"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path_rate: float = 0.0
    interpolate_pos: bool = False
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    def _check(self, images: jnp.ndarray) -> None:
        if self.pool not in ("cls", "mean", "none"):
            raise ValueError(f"pool={self.pool!r}: use 'cls', 'mean' or 'none'")
        if self.pool == "cls" and not self.use_cls:
            raise ValueError("pool='cls' needs use_cls=True; set pool='mean' to drop the token")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed={self.pos_embed!r}: use 'sincos' or 'learned'")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if images.ndim != 4:
            raise ValueError(f"images of shape {images.shape}: expected NHWC [B, H, W, C]")

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, keep_ids: jnp.ndarray | None = None,
                 keep_valid: jnp.ndarray | None = None, mask: jnp.ndarray | None = None,
                 keep_distinct: bool = False, train: bool = False) -> jnp.ndarray:
        """Encode ``images [B, H, W, C]``.

        Args:
          keep_ids: optional int ``[B, K]`` indices (raster order) of the patch tokens to
            encode; positions are added before the subset is taken.
          keep_valid: optional bool ``[B, K]`` with ``keep_ids``: slots marked False are
            padding (I-JEPA's context of variable size in a fixed number of slots): no token
            attends to them, so valid tokens come out as if the padding were absent.
          keep_distinct: promise that each row of ``keep_ids`` is distinct (MAE): the
            subset's gradient is then a gather (:func:`take_tokens`).
          mask: optional bool ``[B, N]`` over all patches (BEiT): masked patches' embeddings
            are replaced by a learned ``mask_token`` before positions are added.
          train: enables dropout / stochastic depth (``"dropout"`` RNG).

        Returns:
          ``[B, dim]`` for ``pool="cls"|"mean"``; for ``pool="none"`` the normalised token
          sequence ``[B, (1 if use_cls) + K, dim]`` (cls first).
        """
        self._check(images)
        p = self.patch_size
        gh, gw = images.shape[1] // p, images.shape[2] // p
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"image size {images.shape[1:3]} is not divisible by "
                             f"patch_size={p}")
        if _patch_embed_matmul():
            x = PatchEmbed(self.dim, p, self.dtype, name="patch_embed")(images)
        else:
            x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                        kernel_init=_DENSE_INIT, name="patch_embed")(images.astype(self.dtype))
        x = x.reshape(x.shape[0], gh * gw, self.dim)
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask of shape {mask.shape} must be [batch, patches] = "
                                 f"{x.shape[:2]}")
            token = self.param("mask_token", nn.initializers.truncated_normal(0.02),
                               (self.dim,))
            x = jnp.where(mask[..., None], token.astype(self.dtype), x)
        if self.pos_embed == "sincos":
            pos = jnp.asarray(sincos_2d_pos_embed(self.dim, (gh, gw)))[None]
        else:
            pos = None
            if self.has_variable("params", "pos_embed"):
                pos = self.get_variable("params", "pos_embed")
                if pos.shape[1] != gh * gw and not self.interpolate_pos:
                    raise ValueError(f"learned pos_embed holds {pos.shape[1]} positions but the "
                                     f"images give {gh * gw} patches; use the training size "
                                     f"or set interpolate_pos=True")
                if pos.shape[1] != gh * gw:
                    pos = interpolate_pos_embed(pos, (gh, gw))
            if pos is None:
                pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                                 (1, gh * gw, self.dim))
        x = x + pos.astype(self.dtype)
        if keep_ids is not None:
            x = take_tokens(x, keep_ids, distinct=keep_distinct)
        if self.use_cls:
            cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.dim))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(
                self.dtype), x], axis=1)
        x = Dropout(self.dropout)(x, deterministic=not train)
        mask = None
        if keep_valid is not None:
            if keep_ids is None or keep_valid.shape != keep_ids.shape:
                raise ValueError(f"keep_valid {getattr(keep_valid, 'shape', None)} needs "
                                 f"keep_ids of the same shape, got "
                                 f"{getattr(keep_ids, 'shape', None)}")
            valid = keep_valid
            if self.use_cls:
                valid = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), valid], axis=1)
            mask = key_padding_mask(valid)
        blocks = [Block(self.num_heads, self.mlp_ratio, self.dropout, self.attn_dropout,
                        self.drop_path_rate * i / max(self.depth - 1, 1), self.dtype,
                        self.attention, name=f"block{i}") for i in range(self.depth)]
        x = run_blocks(blocks, x, self.attention, train=train, mask=mask)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        self.sow("intermediates", "tokens", x)
        if self.pool == "cls":
            return x[:, 0]
        if self.pool == "mean":
            patches = x[:, 1:] if self.use_cls else x
            return jnp.mean(patches.astype(jnp.float32), axis=1).astype(self.dtype)
        return x


def vit(name: str = "b16", **overrides: Any) -> ViT:
    """Build a preset ViT: ``"tiny"`` (dim 32, depth 2, 2 heads, patch 4), ``"ti16"``,
    ``"s16"``, ``"b16"``, ``"l16"``; ``overrides`` (e.g. ``patch_size=4``) set any attribute."""
    if name not in PRESETS:
        raise ValueError(f"vit preset {name!r} unknown; choose one of {sorted(PRESETS)}")
    return ViT(**{**PRESETS[name], **overrides})
