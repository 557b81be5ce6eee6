"""GPT-2 style causal language model (Radford et al. 2019) and a jittable sampler.

Token + learned absolute positions, dropout, pre-LN causal blocks (tanh-GELU, LayerNorm eps
1e-5), final LayerNorm, output head tied to the token embedding. Init N(0, 0.02) with the
residual output projections scaled by 1/sqrt(2·num_layers) (GPT-2 paper §2.3, nanoGPT).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.dropout import Dropout
from jssl.models.transformer import BlockConfig, TokenEmbedding, TransformerStack, make_causal_mask

Array = jax.Array

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=64, max_len=64, hidden_dim=32, num_layers=2, num_heads=2,
                 mlp_dim=128),
    "gpt2_small": dict(vocab_size=50257, max_len=1024, hidden_dim=768, num_layers=12,
                       num_heads=12, mlp_dim=3072),
}


class GPT(nn.Module):
    """Decoder-only transformer: `__call__(tokens [B, L]) -> logits [B, L, vocab]` (float32)."""

    vocab_size: int = 50257
    max_len: int = 1024
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array, *, deterministic: bool = True) -> Array:
        if tokens.ndim != 2:
            raise ValueError(f"GPT: tokens must be [batch, length], got shape {tokens.shape}.")
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"GPT: sequence length {length} > max_len={self.max_len}; "
                             "truncate the input or raise max_len.")
        cfg = BlockConfig(
            dim=self.hidden_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim, pre_norm=True,
            norm="layernorm", norm_epsilon=1e-5, activation="gelu_tanh",
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.dropout_rate,
            init_std=0.02, out_init_std=0.02 / math.sqrt(2 * self.num_layers), dtype=self.dtype)
        embed = TokenEmbedding(self.vocab_size, self.hidden_dim, 0.02, self.dtype,
                               name="token_embed")
        pos = self.param("position_embed", nn.initializers.normal(0.01),
                         (self.max_len, self.hidden_dim), jnp.float32)
        x = embed(tokens) + pos[None, :length].astype(self.dtype)
        x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = TransformerStack(cfg, self.num_layers, final_norm=True, name="decoder")(
            x, make_causal_mask(length), deterministic=deterministic)
        return embed.attend(x)

    def generate(self, params: Any, prompt: Array, key: Array, max_new_tokens: int,
                 temperature: float | Array = 1.0, top_k: int | None = None) -> Array:
        """Sample `max_new_tokens` continuations of `prompt [B, P]` → `[B, P + max_new_tokens]`.

        Pure and jittable (`max_new_tokens`, `top_k` static): a fixed-length token buffer is
        filled by `lax.fori_loop`; step i runs the model on the whole buffer (causality makes
        the not-yet-written tail irrelevant) and samples from the logits at position P+i-1 with
        a key folded from `key` and i. `temperature <= 0` or `top_k=1` is greedy (argmax).
        All prompts share the length P (no left padding). No KV cache: O(N·L²) compute.
        """
        if prompt.ndim != 2:
            raise ValueError(f"GPT.generate: prompt must be [batch, length], got {prompt.shape}.")
        batch, plen = prompt.shape
        total = plen + max_new_tokens
        if plen < 1 or max_new_tokens < 1 or total > self.max_len:
            raise ValueError(
                f"GPT.generate: prompt length {plen} + max_new_tokens={max_new_tokens} must be "
                f"in [2, max_len={self.max_len}] with both >= 1; shorten the prompt or request.")
        if top_k is not None and not 1 <= top_k <= self.vocab_size:
            raise ValueError(f"GPT.generate: top_k={top_k} must be in [1, {self.vocab_size}].")
        buf = jnp.zeros((batch, total), jnp.int32).at[:, :plen].set(prompt.astype(jnp.int32))
        temperature = jnp.asarray(temperature, jnp.float32)

        def step(i: Array, buf: Array) -> Array:
            pos = plen + i
            logits = self.apply({"params": params}, buf)
            logits = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)
            logits = logits.astype(jnp.float32)
            if top_k is not None:
                kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            greedy = jnp.argmax(logits, axis=-1)
            scaled = logits / jnp.maximum(temperature, 1e-6)
            sampled = jax.random.categorical(jax.random.fold_in(key, i), scaled, axis=-1)
            nxt = jnp.where(temperature <= 0.0, greedy, sampled).astype(jnp.int32)
            return jax.lax.dynamic_update_index_in_dim(buf, nxt, pos, axis=1)

        return jax.lax.fori_loop(0, max_new_tokens, step, buf)


def gpt(preset: str, **overrides: Any) -> GPT:
    """Build a `GPT` from a preset name (`tiny`, `gpt2_small`); kwargs override fields."""
    if preset not in PRESETS:
        raise ValueError(f"gpt: unknown preset={preset!r}; use one of {sorted(PRESETS)}.")
    return GPT(**{**PRESETS[preset], **overrides})
