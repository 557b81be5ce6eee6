"""wav2vec 2.0 (Baevski et al. 2020), following fairseq `models/wav2vec/wav2vec2.py`.

waveform [B, S] ─ feature encoder (strided 1-D convs, GELU; GroupNorm on layer 0 = "default"
mode, or LayerNorm on every layer = "layer_norm" mode; gradient × `feature_grad_mult`)
→ features z [B, T, C]; penalty = mean(z²)
→ LayerNorm → (a) linear projection to `dim`, dropout, masked frames replaced by a learned
  mask embedding, convolutional relative positional embedding (grouped conv with weight
  norm, GELU, added), post-LN (or pre-LN) transformer blocks, projection to `final_dim`
  = context c;
  (b) dropout → Gumbel-softmax product quantizer (G groups × V codevectors of size
  final_dim/G, concatenated; hard straight-through sample in training, argmax at eval)
  → linear projection = quantized targets q.
The contrastive + diversity losses live in `jssl/losses`; this module returns everything they
need. All waveforms in a batch share the length S (crop in the data pipeline).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.activations import gelu
from jssl.models.dropout import Dropout
from jssl.models.transformer import BlockConfig, TransformerStack

Array = jax.Array
ConvSpec = tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per layer

#: fairseq default: 7 layers, strides multiply to 320 → one frame per 20 ms at 16 kHz,
#: receptive field 400 samples (25 ms).
BASE_CONV: ConvSpec = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
#: tiny: 3 layers, strides multiply to 20 (one frame per 1.25 ms at 16 kHz); receptive field 30.
TINY_CONV: ConvSpec = ((16, 10, 5), (32, 3, 2), (32, 3, 2))


def num_frames(num_samples: int, conv_layers: ConvSpec = BASE_CONV) -> int:
    """Frames from `num_samples` samples: L ← floor((L − kernel) / stride) + 1 per conv layer."""
    length = int(num_samples)
    for i, (_, kernel, stride) in enumerate(conv_layers):
        if length < kernel:
            raise ValueError(f"num_frames: num_samples={num_samples} leaves {length} steps before "
                             f"conv layer {i} (kernel {kernel}); use a longer waveform.")
        length = (length - kernel) // stride + 1
    return length


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def grad_multiply(x: Array, scale: float) -> Array:
    """Identity forward; gradient multiplied by `scale` (fairseq `GradMultiply`)."""
    return x


def _gm_fwd(x: Array, scale: float) -> tuple[Array, None]:
    return x, None


def _gm_bwd(scale: float, _: None, g: Array) -> tuple[Array]:
    return (g * jnp.asarray(scale, g.dtype),)


grad_multiply.defvjp(_gm_fwd, _gm_bwd)


class FeatureEncoder(nn.Module):
    """Strided 1-D conv stack on the raw waveform: `[B, S] → [B, num_frames(S), C_last]`."""

    conv_layers: ConvSpec = BASE_CONV
    mode: str = "default"
    conv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, waveform: Array) -> Array:
        if self.mode not in ("default", "layer_norm"):
            raise ValueError(f"FeatureEncoder.mode={self.mode!r}; use 'default' or 'layer_norm'.")
        x = waveform[..., None].astype(self.dtype)
        for i, (channels, kernel, stride) in enumerate(self.conv_layers):
            x = nn.Conv(channels, (kernel,), strides=(stride,), padding="VALID",
                        use_bias=self.conv_bias, dtype=self.dtype,
                        kernel_init=nn.initializers.he_normal(), name=f"conv_{i}")(x)
            if self.mode == "layer_norm":
                x = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(x)
            elif i == 0:  # per-channel normalisation over time (GroupNorm(C, C))
                x = nn.GroupNorm(num_groups=channels, epsilon=1e-5, dtype=self.dtype,
                                 name="norm_0")(x)
            x = gelu(x)
        return x


def _perplexity(probs: Array, weights: Array) -> Array:
    """Σ_g exp(H(p̄_g)), p̄ = weighted mean over frames of probs `[N, G, V]` (fairseq, +1e-7)."""
    avg = jnp.einsum("ngv,n->gv", probs, weights) / weights.sum()
    return jnp.exp(-jnp.sum(avg * jnp.log(avg + 1e-7), axis=-1)).sum()


class GumbelQuantizer(nn.Module):
    """Product quantizer with Gumbel-softmax code selection (Jang et al. 2017).

    logits = x W + b → `[B, T, G, V]`. Training: y = softmax((logits + g) / τ), g ~ Gumbel,
    hard one-hot of argmax y with straight-through gradient of y. Eval: one-hot of argmax
    logits. Output: concatenation over groups of the selected codebook rows `[B, T, G·d]`.
    `code_perplexity` uses the hard argmax-of-logits assignments, `prob_perplexity` the
    temperature-free softmax (diversity loss = (G·V − prob_perplexity) / (G·V)); both are
    averaged over the frames with nonzero `weights` (the masked frames, as in fairseq).
    """

    num_groups: int
    num_vars: int
    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temperature: float | Array, weights: Array | None = None,
                 deterministic: bool = True) -> dict[str, Array]:
        g, v = self.num_groups, self.num_vars
        if self.dim % g:
            raise ValueError(f"GumbelQuantizer: dim={self.dim} not divisible by num_groups={g}.")
        if isinstance(temperature, int | float) and temperature <= 0:
            raise ValueError(f"GumbelQuantizer: temperature={temperature} must be > 0.")
        codebook = self.param("codevectors", nn.initializers.uniform(1.0),
                              (g, v, self.dim // g), jnp.float32)
        logits = nn.Dense(g * v, kernel_init=nn.initializers.normal(1.0), dtype=jnp.float32,
                          name="weight_proj")(x.astype(jnp.float32))
        logits = logits.reshape(*x.shape[:-1], g, v)
        batch_shape = logits.shape[:-2]
        hard_idx = jnp.argmax(logits, axis=-1)
        probs = jax.nn.softmax(logits, axis=-1)
        w = jnp.ones(batch_shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
        w = jnp.where(w.sum() > 0, w, jnp.ones_like(w)).reshape(-1)
        flat = lambda a: a.reshape(-1, g, v)  # noqa: E731
        code_ppl = _perplexity(flat(jax.nn.one_hot(hard_idx, v)), w)
        prob_ppl = _perplexity(flat(probs), w)
        if deterministic:
            soft = jax.nn.softmax(logits / temperature, axis=-1)
            idx = hard_idx
        else:
            gumbel = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
            soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
            idx = jnp.argmax(soft, axis=-1)
        quantized = codebook[jnp.arange(g), idx]  # [..., G, d]: exact codebook rows
        if not deterministic:  # straight-through: value += 0 exactly, gradient flows into soft
            quantized = quantized + jnp.einsum("...gv,gvd->...gd",
                                               soft - jax.lax.stop_gradient(soft), codebook)
        return {"quantized": quantized.reshape(*batch_shape, self.dim).astype(self.dtype),
                "codes": idx, "probs": probs, "gumbel_probs": soft,
                "code_perplexity": code_ppl, "prob_perplexity": prob_ppl}


class PositionalConv(nn.Module):
    """Convolutional relative positional embedding: weight-normed grouped conv, GELU.

    'SAME'-style padding of kernel//2 each side; with an even kernel the last frame is dropped.
    Weight norm is over (in, out) per kernel tap (torch `weight_norm(dim=2)`), with the gain
    initialised to the fairseq norm sqrt(4·(dim/groups)/kernel).
    """

    dim: int
    kernel: int = 128
    groups: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.dim % self.groups:
            raise ValueError(f"PositionalConv: dim={self.dim} not divisible by "
                             f"groups={self.groups}; change pos_conv_groups.")
        std = math.sqrt(4.0 / (self.kernel * self.dim))
        gain = math.sqrt(4.0 * (self.dim // self.groups) / self.kernel)
        conv = nn.Conv(self.dim, (self.kernel,), padding=[(self.kernel // 2, self.kernel // 2)],
                       feature_group_count=self.groups, dtype=self.dtype,
                       kernel_init=nn.initializers.normal(std), name="conv")
        y = nn.WeightNorm(conv, feature_axes=0, scale_init=nn.initializers.constant(gain),
                          name="weight_norm")(x)  # no dtype: it would store a bf16 kernel
        if self.kernel % 2 == 0:
            y = y[:, :-1]
        return gelu(y)


class Wav2Vec2(nn.Module):
    """wav2vec 2.0 pre-training network; see the module docstring and `PRESETS`.

    `__call__(waveform [B, S], mask [B, T] | None, gumbel_temperature, *, train)` → dict:
    `context`, `quantized` `[B, T, final_dim]`; `hidden` `[B, T, dim]` (transformer output,
    for fine-tuning/probes); `features_penalty`, `code_perplexity`, `prob_perplexity`
    (scalars); `probs` `[B, T, G, V]` (softmax of the quantizer logits, for the diversity
    loss); `gumbel_probs` (the relaxed assignment at the given temperature); `codes`
    `[B, T, G]`. Training needs rngs `dropout` and `gumbel`. The transformer input is sown
    as `intermediates/transformer_input`.
    """

    conv_layers: ConvSpec = BASE_CONV
    extractor_mode: str = "default"
    conv_bias: bool = False
    dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    final_dim: int = 256
    num_codevector_groups: int = 2
    num_codevectors: int = 320
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    pre_norm: bool = False
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    activation_dropout_rate: float = 0.0
    dropout_input: float = 0.1
    dropout_features: float = 0.1
    layerdrop: float = 0.05
    feature_grad_mult: float = 0.1
    dtype: Any = jnp.float32

    def frames(self, num_samples: int) -> int:
        """Number of frames this model's feature encoder gives for `num_samples`."""
        return num_frames(num_samples, self.conv_layers)

    @nn.compact
    def __call__(self, waveform: Array, mask: Array | None = None,
                 gumbel_temperature: float | Array = 2.0, *, train: bool = False
                 ) -> dict[str, Array]:
        if waveform.ndim != 2:
            raise ValueError(f"Wav2Vec2: waveform must be [batch, samples], got {waveform.shape}.")
        frames = self.frames(waveform.shape[1])
        if mask is not None and mask.shape != (waveform.shape[0], frames):
            raise ValueError(f"Wav2Vec2: mask shape {mask.shape} != (batch, num_frames) = "
                             f"{(waveform.shape[0], frames)}; build it with num_frames(samples).")
        det = not train
        feats = FeatureEncoder(self.conv_layers, self.extractor_mode, self.conv_bias, self.dtype,
                               name="feature_encoder")(waveform)
        if self.feature_grad_mult != 1.0:
            feats = grad_multiply(feats, self.feature_grad_mult)
        penalty = jnp.mean(jnp.square(feats.astype(jnp.float32)))
        feats = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="feature_norm")(feats)
        unmasked = feats
        x = feats
        if feats.shape[-1] != self.dim:
            x = nn.Dense(self.dim, dtype=self.dtype, name="post_extract_proj")(x)
        x = Dropout(self.dropout_input)(x, deterministic=det)
        unmasked = Dropout(self.dropout_features)(unmasked, deterministic=det)
        if mask is not None:
            mask_emb = self.param("mask_embedding", nn.initializers.uniform(1.0), (self.dim,),
                                  jnp.float32)
            x = jnp.where(mask[..., None], mask_emb.astype(self.dtype), x)
        self.sow("intermediates", "transformer_input", x)

        x = x + PositionalConv(self.dim, self.pos_conv_kernel, self.pos_conv_groups, self.dtype,
                               name="pos_conv")(x)
        if not self.pre_norm:
            x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="encoder_norm")(x)
        x = Dropout(self.dropout_rate)(x, deterministic=det)
        cfg = BlockConfig(
            dim=self.dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            pre_norm=self.pre_norm, activation="gelu", dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            activation_dropout_rate=self.activation_dropout_rate, dtype=self.dtype)
        hidden = TransformerStack(cfg, self.num_layers, final_norm=self.pre_norm,
                                  layerdrop=self.layerdrop, name="encoder")(x, deterministic=det)
        context = nn.Dense(self.final_dim, dtype=self.dtype, name="final_proj")(hidden)

        q = GumbelQuantizer(self.num_codevector_groups, self.num_codevectors, self.final_dim,
                            self.dtype, name="quantizer")(unmasked, gumbel_temperature, mask, det)
        quantized = nn.Dense(self.final_dim, dtype=self.dtype, name="project_q")(q["quantized"])
        return {"context": context, "quantized": quantized, "hidden": hidden,
                "features_penalty": penalty, "code_perplexity": q["code_perplexity"],
                "prob_perplexity": q["prob_perplexity"], "probs": q["probs"],
                "gumbel_probs": q["gumbel_probs"], "codes": q["codes"]}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(conv_layers=TINY_CONV, dim=32, num_layers=2, num_heads=2, mlp_dim=64,
                 final_dim=16, num_codevector_groups=2, num_codevectors=16, pos_conv_kernel=8,
                 pos_conv_groups=4, layerdrop=0.0),
    "base": dict(conv_layers=BASE_CONV, dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                 final_dim=256, num_codevector_groups=2, num_codevectors=320),
    # LV-60k "large": layer-norm feature encoder with conv bias, pre-LN transformer.
    "large": dict(conv_layers=BASE_CONV, extractor_mode="layer_norm", conv_bias=True, dim=1024,
                  num_layers=24, num_heads=16, mlp_dim=4096, final_dim=768,
                  num_codevector_groups=2, num_codevectors=320, pre_norm=True,
                  feature_grad_mult=1.0, layerdrop=0.0),
}


def wav2vec2(preset: str, **overrides: Any) -> Wav2Vec2:
    """Build a `Wav2Vec2` from a preset name (`tiny`, `base`, `large`); kwargs override fields."""
    if preset not in PRESETS:
        raise ValueError(f"wav2vec2: unknown preset={preset!r}; use one of {sorted(PRESETS)}.")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Wav2Vec2)}
    if unknown:
        raise ValueError(f"wav2vec2: unknown overrides {sorted(unknown)}.")
    return Wav2Vec2(**{**PRESETS[preset], **overrides})
