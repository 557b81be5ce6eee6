"""BERT encoder with MLM and NSP heads (Devlin et al. 2019) and the RoBERTa variant (Liu et al.
2019: no segment embeddings, no NSP).

Embeddings = token + learned absolute position (+ segment), LayerNorm, dropout; post-LN
transformer blocks (exact GELU, LayerNorm eps 1e-12, N(0, 0.02) init). Heads:
- MLM: dense → GELU → LayerNorm, then logits tied to the token embedding plus an output bias;
- pooler: dense → tanh on the [CLS] (first) token; NSP: pooled → 2 logits.
RoBERTa positions here start at 0 (HF offsets them by padding_idx + 1; the model is the same).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.activations import gelu
from jssl.models.dropout import Dropout
from jssl.models.transformer import BlockConfig, TokenEmbedding, TransformerStack, make_padding_mask

Array = jax.Array

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=128),
    "base": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072, max_len=512),
    "roberta_base": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072, max_len=512,
                         type_vocab_size=0, use_nsp=False),
}


class BERT(nn.Module):
    """BERT / RoBERTa encoder with MLM (+ NSP) heads.

    `__call__(tokens [B, L], segment_ids=None, padding_mask=None, mlm_positions=None)` returns
    a dict: `hidden [B, L, D]`, `pooled [B, D]` (features for probes), `mlm_logits [B, L|P, V]`
    float32 (computed only at `mlm_positions [B, P]` if given) and `nsp_logits [B, 2]` if
    `use_nsp`. `padding_mask [B, L]` is True for real tokens.
    """

    vocab_size: int
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2
    use_nsp: bool = True
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    init_std: float = 0.02
    dtype: Any = jnp.float32

    def _block_config(self) -> BlockConfig:
        return BlockConfig(
            dim=self.hidden_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim, pre_norm=False,
            norm="layernorm", norm_epsilon=1e-12, activation="gelu",
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
            init_std=self.init_std, dtype=self.dtype)

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None,
                 padding_mask: Array | None = None, mlm_positions: Array | None = None, *,
                 deterministic: bool = True) -> dict[str, Array]:
        if tokens.ndim != 2:
            raise ValueError(f"BERT: tokens must be [batch, length], got shape {tokens.shape}.")
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"BERT: sequence length {length} > max_len={self.max_len}; "
                             "truncate the input or raise max_len.")
        if segment_ids is not None and self.type_vocab_size == 0:
            raise ValueError("BERT: segment_ids given but type_vocab_size=0 (RoBERTa has no "
                             "segment embeddings); drop segment_ids or set type_vocab_size.")
        init = nn.initializers.normal(self.init_std)
        embed = TokenEmbedding(self.vocab_size, self.hidden_dim, self.init_std, self.dtype,
                               name="token_embed")
        x = embed(tokens)
        pos = self.param("position_embed", init, (self.max_len, self.hidden_dim), jnp.float32)
        x = x + pos[None, :length].astype(self.dtype)
        if self.type_vocab_size > 0:
            seg = jnp.zeros_like(tokens) if segment_ids is None else segment_ids
            x = x + nn.Embed(self.type_vocab_size, self.hidden_dim, dtype=self.dtype,
                             embedding_init=init, name="segment_embed")(seg)
        x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="embed_norm")(x)
        x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
        mask = None if padding_mask is None else make_padding_mask(padding_mask.astype(bool))
        hidden = TransformerStack(self._block_config(), self.num_layers, final_norm=False,
                                  name="encoder")(x, mask, deterministic=deterministic)

        pooled = jnp.tanh(nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=init,
                                   name="pooler")(hidden[:, 0]))
        h = hidden
        if mlm_positions is not None:
            h = jnp.take_along_axis(hidden, mlm_positions[..., None].astype(jnp.int32), axis=1)
        h = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=init, name="mlm_dense")(h)
        h = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="mlm_norm")(
            gelu(h))
        mlm_bias = self.param("mlm_bias", nn.initializers.zeros, (self.vocab_size,), jnp.float32)
        out = {"hidden": hidden, "pooled": pooled, "mlm_logits": embed.attend(h) + mlm_bias}
        if self.use_nsp:
            out["nsp_logits"] = nn.Dense(2, dtype=self.dtype, kernel_init=init, name="nsp")(
                pooled).astype(jnp.float32)
        return out


def bert(preset: str, vocab_size: int, **overrides: Any) -> BERT:
    """Build a `BERT` from a preset name (`tiny`, `base`, `roberta_base`) and a vocab size."""
    if preset not in PRESETS:
        raise ValueError(f"bert: unknown preset={preset!r}; use one of {sorted(PRESETS)}.")
    if vocab_size <= 0:
        raise ValueError(f"bert: vocab_size={vocab_size} must be positive.")
    return BERT(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})
