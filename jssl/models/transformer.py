"""One transformer block shared by BERT, GPT-2, T5 and the wav2vec 2.0 context network.

Vaswani et al. 2017, "Attention Is All You Need". The block is configured by a frozen
`BlockConfig`: pre-norm (GPT-2, T5, Xiong et al. 2020) or post-norm (BERT, wav2vec 2.0),
LayerNorm or bias-free RMSNorm (T5), GELU / tanh-GELU / ReLU MLP, optionally gated (T5 v1.1
GEGLU, Shazeer 2020), optional cross-attention (T5 decoder) and an additive attention bias
(T5 relative positions). Masks are boolean `[batch, 1 | heads, q_len, kv_len]`, True = attend.
Params are float32; the compute dtype is `BlockConfig.dtype`; softmax runs in float32.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models import native_attention
from jssl.models.activations import gelu
from jssl.models.dense import dense_dot_general
from jssl.models.dropout import Dropout
from jssl.models.head_major import attend, attention_logits

Array = jax.Array
Dtype = Any

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
_NORMS = ("layernorm", "rmsnorm")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Hyper-parameters of one transformer block (hashable, so usable as a module attribute).

    init_std: std of the normal init of every kernel; None = fan-in variance scaling (T5 / Mesh
      TF), in which case queries get an extra 1/head_dim variance when `scale_logits` is False.
    out_init_std: std for the two residual output projections (GPT-2: 0.02/sqrt(2L)); None =
      same as the other kernels.
    """

    dim: int
    num_heads: int
    mlp_dim: int
    head_dim: int | None = None
    pre_norm: bool = True
    norm: str = "layernorm"
    norm_epsilon: float = 1e-5
    use_bias: bool = True
    activation: str = "gelu"
    gated_mlp: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    activation_dropout_rate: float = 0.0
    scale_logits: bool = True
    cross_attention: bool = False
    init_std: float | None = 0.02
    out_init_std: float | None = None
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        for name in ("dim", "num_heads", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BlockConfig.{name}={getattr(self, name)} must be positive.")
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"BlockConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                "pick divisible values or set head_dim explicitly.")
        if self.norm not in _NORMS:
            raise ValueError(f"BlockConfig.norm={self.norm!r}; use one of {_NORMS}.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"BlockConfig.activation={self.activation!r}; "
                             f"use one of {sorted(_ACTIVATIONS)}.")
        for name in ("dropout_rate", "attention_dropout_rate", "activation_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BlockConfig.{name}={getattr(self, name)} must be in [0, 1).")

    @property
    def heads_dim(self) -> int:
        """Per-head width."""
        return self.head_dim if self.head_dim is not None else self.dim // self.num_heads

    def kernel_init(self, out: bool = False) -> nn.initializers.Initializer:
        """Initializer for a kernel; `out` selects the residual-output-projection std."""
        std = self.out_init_std if (out and self.out_init_std is not None) else self.init_std
        if std is None:
            return nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        return nn.initializers.normal(std)


def make_causal_mask(length: int) -> Array:
    """Boolean `[1, 1, length, length]` mask, True where key position <= query position."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]


def make_padding_mask(q_valid: Array, kv_valid: Array | None = None) -> Array:
    """Boolean `[B, 1, Lq, Lk]` mask from per-token validity `[B, L]` (True = real token)."""
    kv_valid = q_valid if kv_valid is None else kv_valid
    return nn.make_attention_mask(q_valid, kv_valid, pairwise_fn=jnp.logical_and, dtype=bool)


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of broadcastable boolean masks, ignoring None entries."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0].astype(bool)
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def make_norm(cfg: BlockConfig, name: str | None = None) -> nn.Module:
    """LayerNorm (with bias iff `use_bias`) or scale-only RMSNorm, float32 params."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=cfg.norm_epsilon, dtype=cfg.dtype, name=name)
    return nn.LayerNorm(epsilon=cfg.norm_epsilon, use_bias=cfg.use_bias, dtype=cfg.dtype,
                        name=name)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention; self-attention when `context` is None.

    logits = q·kᵀ (/ sqrt(head_dim) if `scale_logits`) + bias, masked to -inf-like where
    `mask` is False, softmax in float32, dropout on the probabilities. On a one-device CPU,
    float32 self-attention without a bias runs as one fused kernel with the same function and
    dropout mask (`jssl.models.native_attention`).
    """

    cfg: BlockConfig

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None, mask: Array | None = None,
                 bias: Array | None = None, deterministic: bool = True) -> Array:
        cfg = self.cfg
        self_attention = context is None
        context = x if context is None else context
        dh = cfg.heads_dim
        q_init = cfg.kernel_init()
        if cfg.init_std is None and not cfg.scale_logits:
            q_init = nn.initializers.variance_scaling(1.0 / dh, "fan_in", "normal")
        proj = lambda name, init: nn.DenseGeneral(  # noqa: E731
            (cfg.num_heads, dh), use_bias=cfg.use_bias, dtype=cfg.dtype, kernel_init=init,
            dot_general=dense_dot_general, name=name)
        q = proj("query", q_init)(x)
        k = proj("key", cfg.kernel_init())(context)
        v = proj("value", cfg.kernel_init())(context)
        if cfg.scale_logits:
            q = q / jnp.sqrt(dh).astype(q.dtype)
        if (self_attention and bias is None and native_attention.supports(q, k, v, mask)
                and native_attention.enabled()):  # the same function, one fused CPU kernel
            shape = (q.shape[0], cfg.num_heads, q.shape[1], q.shape[1])
            keep = Dropout(cfg.attention_dropout_rate).keep(shape, deterministic)
            out = native_attention.attention(q, k, v, mask=mask, keep=keep, scale=False,
                                             keep_prob=1.0 - cfg.attention_dropout_rate)
        else:
            logits = attention_logits(q, k, preferred_element_type=jnp.float32)
            if bias is not None:
                logits = logits + bias.astype(jnp.float32)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1)
            probs = Dropout(cfg.attention_dropout_rate)(probs, deterministic=deterministic)
            out = attend(probs.astype(cfg.dtype), v)
        return nn.DenseGeneral(cfg.dim, axis=(-2, -1), use_bias=cfg.use_bias, dtype=cfg.dtype,
                               kernel_init=cfg.kernel_init(out=True),
                               dot_general=dense_dot_general, name="out")(out)


class Mlp(nn.Module):
    """Position-wise MLP: dense → act → dense, or gated act(x W0) ⊙ (x W1) → dense (GEGLU)."""

    cfg: BlockConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.cfg
        act = _ACTIVATIONS[cfg.activation]
        dense = lambda n, name, out=False: nn.Dense(  # noqa: E731
            n, use_bias=cfg.use_bias, dtype=cfg.dtype, kernel_init=cfg.kernel_init(out),
            dot_general=dense_dot_general, name=name)
        h = act(dense(cfg.mlp_dim, "wi")(x))
        if cfg.gated_mlp:
            h = h * dense(cfg.mlp_dim, "wi_gate")(x)
        h = Dropout(cfg.activation_dropout_rate)(h, deterministic=deterministic)
        return dense(cfg.dim, "wo", out=True)(h)


class TransformerBlock(nn.Module):
    """Self-attention [+ cross-attention] + MLP, each a residual sublayer with dropout.

    Pre-norm: x + Drop(f(Norm(x))). Post-norm: Norm(x + Drop(f(x))). `bias` is added to the
    self-attention logits only; `context`/`context_mask` feed cross-attention.
    """

    cfg: BlockConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, bias: Array | None = None,
                 context: Array | None = None, context_mask: Array | None = None,
                 deterministic: bool = True) -> Array:
        cfg = self.cfg
        if cfg.cross_attention and context is None:
            raise ValueError("TransformerBlock: cfg.cross_attention=True needs `context`; "
                             "pass the encoder output.")

        def sublayer(x: Array, fn: Callable[[Array], Array], name: str) -> Array:
            if cfg.pre_norm:
                y = fn(make_norm(cfg, f"{name}_norm")(x))
                return x + Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
            y = Dropout(cfg.dropout_rate)(fn(x), deterministic=deterministic)
            return make_norm(cfg, f"{name}_norm")(x + y)

        attn = MultiHeadAttention(cfg, name="self_attention")
        x = sublayer(x, lambda h: attn(h, mask=mask, bias=bias, deterministic=deterministic),
                     "self_attention")
        if cfg.cross_attention:
            xattn = MultiHeadAttention(cfg, name="cross_attention")
            x = sublayer(x, lambda h: xattn(h, context, mask=context_mask,
                                            deterministic=deterministic), "cross_attention")
        mlp = Mlp(cfg, name="mlp")
        return sublayer(x, lambda h: mlp(h, deterministic=deterministic), "mlp")


class TransformerStack(nn.Module):
    """`num_layers` blocks and an optional final norm (pre-norm stacks need one).

    `layerdrop` (Fan et al. 2019, used by wav2vec 2.0) skips each whole block with that
    probability in training; shapes stay static (the block is computed and discarded).
    """

    cfg: BlockConfig
    num_layers: int
    final_norm: bool = True
    layerdrop: float = 0.0

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, bias: Array | None = None,
                 context: Array | None = None, context_mask: Array | None = None,
                 deterministic: bool = True) -> Array:
        if self.num_layers <= 0:
            raise ValueError(f"TransformerStack.num_layers={self.num_layers} must be positive.")
        if not 0.0 <= self.layerdrop < 1.0:
            raise ValueError(f"TransformerStack.layerdrop={self.layerdrop} must be in [0, 1).")
        x = x.astype(self.cfg.dtype)
        for i in range(self.num_layers):
            y = TransformerBlock(self.cfg, name=f"layer_{i}")(
                x, mask, bias, context, context_mask, deterministic)
            if self.layerdrop > 0.0 and not deterministic:
                keep = jax.random.uniform(self.make_rng("dropout")) >= self.layerdrop
                y = jnp.where(keep, y, x)
            x = y
        if self.final_norm:
            x = make_norm(self.cfg, "final_norm")(x)
        return x


class TokenEmbedding(nn.Module):
    """Token lookup table `E [vocab, dim]` (float32) with `attend`: logits = x·Eᵀ (float32)."""

    vocab_size: int
    dim: int
    init_std: float | None = 0.02
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        if self.vocab_size <= 0 or self.dim <= 0:
            raise ValueError(f"TokenEmbedding(vocab_size={self.vocab_size}, dim={self.dim}): "
                             "both must be positive.")
        init = (nn.initializers.normal(self.init_std) if self.init_std is not None
                else nn.initializers.normal(1.0))
        self.embedding = self.param("embedding", init, (self.vocab_size, self.dim), jnp.float32)

    def __call__(self, ids: Array) -> Array:
        """Embed integer ids `[...]` → `[..., dim]` in the compute dtype."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        """Tied output head: `x [..., dim] · Eᵀ → [..., vocab]`, accumulated in float32."""
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype),
                          preferred_element_type=jnp.float32)
