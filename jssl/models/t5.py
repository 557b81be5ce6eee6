"""T5 encoder–decoder (Raffel et al. 2020), v1.1-style building blocks.

Pre-norm blocks with bias-free RMSNorm, no biases anywhere, no 1/sqrt(d) logit scaling (folded
into the query init, Mesh TF style), relative position biases: one learned
`[num_buckets, heads]` table per stack, bucketed by `relative_position_bucket`
(bidirectional in the encoder, causal in the decoder), computed once and added to the
self-attention logits of every layer. The decoder cross-attends to the encoder output. The
token embedding is shared by encoder and decoder; the LM head is tied (logits = (x·d^-½)·Eᵀ,
T5 v1.0) or a separate bias-free dense layer (v1.1).
Presets: `t5_small`/`t5_base` have the original T5 shapes (ReLU MLP, tied head);
`t5_v1_1_small`/`t5_v1_1_base` the v1.1 ones (gated-GELU, untied head).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.dropout import Dropout
from jssl.models.transformer import (
    BlockConfig,
    TokenEmbedding,
    TransformerStack,
    combine_masks,
    make_causal_mask,
    make_padding_mask,
)

Array = jax.Array

_COMMON = dict(head_dim=64, num_buckets=32, max_distance=128)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=64, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                 num_encoder_layers=2, num_decoder_layers=2, num_buckets=32, max_distance=128),
    "t5_small": dict(vocab_size=32128, d_model=512, num_heads=8, d_ff=2048,
                     num_encoder_layers=6, num_decoder_layers=6, activation="relu",
                     gated_mlp=False, tie_embeddings=True, **_COMMON),
    "t5_base": dict(vocab_size=32128, d_model=768, num_heads=12, d_ff=3072,
                    num_encoder_layers=12, num_decoder_layers=12, activation="relu",
                    gated_mlp=False, tie_embeddings=True, **_COMMON),
    "t5_v1_1_small": dict(vocab_size=32128, d_model=512, num_heads=6, d_ff=1024,
                          num_encoder_layers=8, num_decoder_layers=8, **_COMMON),
    "t5_v1_1_base": dict(vocab_size=32128, d_model=768, num_heads=12, d_ff=2048,
                         num_encoder_layers=12, num_decoder_layers=12, **_COMMON),
}


def relative_position_bucket(relative_position: Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> Array:
    """T5's `_relative_position_bucket`: map key−query offsets to bucket ids in [0, num_buckets).

    Half the buckets (bidirectional: per direction) are exact for small |offset|, the rest are
    log-spaced up to `max_distance`; larger offsets share the last bucket. Causal mode maps all
    positive (future) offsets to bucket 0.
    """
    ret = jnp.zeros_like(relative_position, dtype=jnp.int32)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


def shift_right(targets: Array, decoder_start_id: int = 0) -> Array:
    """Teacher-forcing decoder input: `[start, t_0, ..., t_{L-2}]` from targets `[B, L]`."""
    start = jnp.full_like(targets[:, :1], decoder_start_id)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)


class RelativePositionBias(nn.Module):
    """Learned bias `[1, heads, q_len, k_len]` from bucketed relative positions (one per stack)."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> Array:
        rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        table = self.param("rel_embedding", nn.initializers.normal(1.0),
                           (self.num_buckets, self.num_heads), jnp.float32)
        return jnp.transpose(table[buckets], (2, 0, 1))[None]


class T5(nn.Module):
    """T5: `__call__(enc_tokens [B, Le], dec_in_tokens [B, Ld]) -> logits [B, Ld, V]` float32.

    Optional `enc_padding_mask [B, Le]` / `dec_padding_mask [B, Ld]` (True = real token).
    `encode` and `decode` are exposed for probes and incremental use via `apply(method=...)`.
    """

    vocab_size: int = 32128
    d_model: int = 512
    num_heads: int = 8
    head_dim: int = 64
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_buckets: int = 32
    max_distance: int = 128
    activation: str = "gelu_tanh"
    gated_mlp: bool = True
    tie_embeddings: bool = False
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.num_buckets < 4 or self.max_distance <= self.num_buckets // 4:
            raise ValueError(f"T5: num_buckets={self.num_buckets} must be >= 4 and "
                             f"max_distance={self.max_distance} > num_buckets // 4.")
        cfg = BlockConfig(
            dim=self.d_model, num_heads=self.num_heads, head_dim=self.head_dim,
            mlp_dim=self.d_ff, pre_norm=True, norm="rmsnorm", norm_epsilon=1e-6, use_bias=False,
            activation=self.activation, gated_mlp=self.gated_mlp, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.dropout_rate, scale_logits=False, init_std=None,
            dtype=self.dtype)
        self.embed = TokenEmbedding(self.vocab_size, self.d_model, init_std=None,
                                    dtype=self.dtype)
        self.encoder = TransformerStack(cfg, self.num_encoder_layers, final_norm=True)
        self.decoder = TransformerStack(dataclasses.replace(cfg, cross_attention=True),
                                        self.num_decoder_layers, final_norm=True)
        rel = dict(num_heads=self.num_heads, num_buckets=self.num_buckets,
                   max_distance=self.max_distance)
        self.encoder_rel_bias = RelativePositionBias(bidirectional=True, **rel)
        self.decoder_rel_bias = RelativePositionBias(bidirectional=False, **rel)
        self.dropout = Dropout(self.dropout_rate)
        if not self.tie_embeddings:
            self.lm_head = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                                    kernel_init=nn.initializers.variance_scaling(
                                        1.0, "fan_in", "normal"))

    def encode(self, enc_tokens: Array, enc_padding_mask: Array | None = None, *,
               deterministic: bool = True) -> Array:
        """Encoder output `[B, Le, d_model]` (after the final RMSNorm and dropout)."""
        if enc_tokens.ndim != 2:
            raise ValueError(f"T5: enc_tokens must be [batch, length], got {enc_tokens.shape}.")
        length = enc_tokens.shape[1]
        mask = None if enc_padding_mask is None else make_padding_mask(enc_padding_mask)
        x = self.dropout(self.embed(enc_tokens), deterministic=deterministic)
        x = self.encoder(x, mask, self.encoder_rel_bias(length, length),
                         deterministic=deterministic)
        return self.dropout(x, deterministic=deterministic)

    def decode(self, encoded: Array, dec_in_tokens: Array, enc_padding_mask: Array | None = None,
               dec_padding_mask: Array | None = None, *, deterministic: bool = True) -> Array:
        """Decoder logits `[B, Ld, vocab]` (float32) given the encoder output."""
        if dec_in_tokens.ndim != 2:
            raise ValueError(
                f"T5: dec_in_tokens must be [batch, length], got {dec_in_tokens.shape}.")
        batch, length = dec_in_tokens.shape
        self_mask = combine_masks(
            make_causal_mask(length),
            None if dec_padding_mask is None else make_padding_mask(dec_padding_mask))
        cross_mask = None
        if enc_padding_mask is not None:
            q_valid = (jnp.ones((batch, length), bool) if dec_padding_mask is None
                       else dec_padding_mask)
            cross_mask = make_padding_mask(q_valid, enc_padding_mask)
        x = self.dropout(self.embed(dec_in_tokens), deterministic=deterministic)
        x = self.decoder(x, self_mask, self.decoder_rel_bias(length, length), encoded,
                         cross_mask, deterministic=deterministic)
        x = self.dropout(x, deterministic=deterministic)
        if self.tie_embeddings:
            return self.embed.attend(x * jnp.asarray(self.d_model ** -0.5, x.dtype))
        return self.lm_head(x).astype(jnp.float32)

    def __call__(self, enc_tokens: Array, dec_in_tokens: Array,
                 enc_padding_mask: Array | None = None, dec_padding_mask: Array | None = None,
                 *, deterministic: bool = True) -> Array:
        encoded = self.encode(enc_tokens, enc_padding_mask, deterministic=deterministic)
        return self.decode(encoded, dec_in_tokens, enc_padding_mask, dec_padding_mask,
                           deterministic=deterministic)


def t5(preset: str, **overrides: Any) -> T5:
    """Build a `T5` from a preset (`tiny`, `t5_small`, `t5_base`, `t5_v1_1_small|base`)."""
    if preset not in PRESETS:
        raise ValueError(f"t5: unknown preset={preset!r}; use one of {sorted(PRESETS)}.")
    return T5(**{**PRESETS[preset], **overrides})
