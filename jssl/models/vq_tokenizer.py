"""Visual tokenizer for BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", 2022).

BEiT predicts the ids of a discrete visual tokenizer; the paper uses the pretrained DALL-E
dVAE (Ramesh et al. 2021, 8192 codes). Those weights cannot be downloaded in this
environment, so jssl trains its own tokenizer: a small VQ-VAE (van den Oord et al.,
"Neural Discrete Representation Learning", 2017) that downsamples by ``patch_size`` so one
code id sits on each ViT patch.

* encoder: 3x3 conv, ``log2(patch_size)`` stride-2 4x4 convs (ReLU), 1x1 conv to ``code_dim``;
* quantiser: nearest of ``codebook_size`` codes (squared L2 in float32); straight-through
  estimator ``z_q = z + sg(e - z)``; ``vq_loss = ||sg(z) - e||^2 + beta * ||z - sg(e)||^2``
  (codebook loss + commitment loss, beta = 0.25);
* ``l2_normalize`` (ViT-VQGAN, Yu et al. 2022, §3.2): ``z`` and every code are divided by
  their L2 norm before the lookup and the losses, so the nearest code is the one of largest
  cosine similarity and the codebook cannot drift away from the encoder's scale (without it,
  codes initialised at ±1/K against large encoder outputs mostly go unused);
* decoder: 1x1 conv, ``log2(patch_size)`` stride-2 4x4 transposed convs (ReLU), 3x3 conv.

``perplexity = exp(H(p))`` with ``p`` the code-usage frequencies over the batch (``K`` when all
codes are used equally, 1 on collapse). Train with :func:`vq_vae_loss` and any optax
optimiser; then ``apply(variables, images, method=VQTokenizer.encode)`` gives BEiT targets.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.losses._common import l2_normalize

Dtype = Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=4, codebook_size=16, code_dim=8, hidden=16),
    "cifar": dict(patch_size=4, codebook_size=512, code_dim=32, hidden=128, l2_normalize=True),
    "beit": dict(patch_size=8, codebook_size=8192, code_dim=32, hidden=128, l2_normalize=True),
}


class VQTokenizer(nn.Module):
    """VQ-VAE tokenizer: ``images [B, H, W, C] -> ids [B, H/p, W/p]`` in ``[0, K)``.

    Attributes:
      patch_size: downsampling factor ``p`` (a power of two; BEiT feeds 112 px images to an
        8x tokenizer so the 14x14 token grid matches ViT-B/16 at 224 px).
      codebook_size: number of codes ``K`` (8192 for DALL-E).
      code_dim: code vector width.
      hidden: conv channel width.
      channels: image channels.
      beta: commitment loss weight (0.25).
      l2_normalize: look up and train on L2-normalised latents and codes (ViT-VQGAN).
      dtype: conv computation dtype (quantisation and losses in float32).
    """

    patch_size: int = 8
    codebook_size: int = 8192
    code_dim: int = 32
    hidden: int = 128
    channels: int = 3
    beta: float = 0.25
    l2_normalize: bool = False
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        p = self.patch_size
        if p < 1 or p & (p - 1):
            raise ValueError(f"patch_size={p}: must be a power of two (1, 2, 4, 8, 16 ...)")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size={self.codebook_size}: need at least 2 codes")
        n_down = int(math.log2(p))
        conv = lambda f, k, s=1: nn.Conv(f, (k, k), (s, s), padding="SAME", dtype=self.dtype)
        self.enc_in = conv(self.hidden, 3)
        self.enc_down = [conv(self.hidden, 4, 2) for _ in range(n_down)]
        self.enc_out = conv(self.code_dim, 1)
        lim = 1.0 / self.codebook_size
        self.codebook = self.param(
            "codebook", lambda k, s: jax.random.uniform(k, s, jnp.float32, -lim, lim),
            (self.codebook_size, self.code_dim))
        self.dec_in = conv(self.hidden, 1)
        self.dec_up = [nn.ConvTranspose(self.hidden, (4, 4), (2, 2), padding="SAME",
                                        dtype=self.dtype) for _ in range(n_down)]
        self.dec_out = conv(self.channels, 3)

    def _encode_latent(self, images: jnp.ndarray) -> jnp.ndarray:
        if images.ndim != 4 or images.shape[-1] != self.channels:
            raise ValueError(f"images of shape {images.shape}: expected [B, H, W, "
                             f"{self.channels}] (set channels= to match)")
        if images.shape[1] % self.patch_size or images.shape[2] % self.patch_size:
            raise ValueError(f"image size {images.shape[1:3]} not divisible by patch_size="
                             f"{self.patch_size}")
        x = nn.relu(self.enc_in(images.astype(self.dtype)))
        for layer in self.enc_down:
            x = nn.relu(layer(x))
        return self._norm(self.enc_out(x).astype(jnp.float32))

    def _norm(self, v: jnp.ndarray) -> jnp.ndarray:
        return l2_normalize(v) if self.l2_normalize else v

    def codes(self) -> jnp.ndarray:
        """The code vectors ``[K, code_dim]`` as the decoder sees them (normalised if set)."""
        return self._norm(self.codebook)

    def _nearest(self, z: jnp.ndarray, e: jnp.ndarray) -> jnp.ndarray:
        """Index of the code in ``e`` [K, D] nearest to each ``z`` [..., D]."""
        d = (jnp.sum(z * z, -1, keepdims=True) - 2.0 * jnp.einsum("...d,kd->...k", z, e)
             + jnp.sum(e * e, -1))
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def encode(self, images: jnp.ndarray) -> jnp.ndarray:
        """Token ids ``[B, H/p, W/p]`` (int32, in ``[0, codebook_size)``)."""
        return self._nearest(self._encode_latent(images), self.codes())

    def decode_ids(self, ids: jnp.ndarray) -> jnp.ndarray:
        """Images ``[B, H, W, C]`` (float32) reconstructed from token ids ``[B, h, w]``."""
        return self._decode(self.codes()[ids])

    def _decode(self, zq: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(self.dec_in(zq.astype(self.dtype)))
        for layer in self.dec_up:
            x = nn.relu(layer(x))
        return self.dec_out(x).astype(jnp.float32)

    def __call__(self, images: jnp.ndarray):
        """Returns ``(recon [B, H, W, C] float32, ids [B, H/p, W/p], vq_loss, perplexity)``."""
        z = self._encode_latent(images)
        codes = self.codes()
        ids = self._nearest(z, codes)
        e = codes[ids]
        sg = jax.lax.stop_gradient
        codebook_loss = jnp.mean((sg(z) - e) ** 2)
        commitment = jnp.mean((z - sg(e)) ** 2)
        vq_loss = codebook_loss + self.beta * commitment
        zq = z + sg(e - z)  # straight-through: forward e, gradient to z unchanged
        recon = self._decode(zq)
        usage = jnp.mean(jax.nn.one_hot(ids.reshape(-1), self.codebook_size), axis=0)
        entropy = -jnp.sum(jnp.where(usage > 0, usage * jnp.log(jnp.maximum(usage, 1e-30)),
                                     0.0))
        return recon, ids, vq_loss, sg(jnp.exp(entropy))


def vq_vae_loss(params: Any, images: jnp.ndarray, *, model: VQTokenizer):
    """``(loss, metrics)`` with ``loss = mean((recon - images)^2) + vq_loss``.

    ``jax.value_and_grad(vq_vae_loss, has_aux=True)(params, images, model=model)``;
    ``metrics`` holds ``recon_mse``, ``vq_loss`` and ``perplexity``.
    """
    recon, _, vq_loss, perplexity = model.apply({"params": params}, images)
    mse = jnp.mean((recon - images.astype(jnp.float32)) ** 2)
    return mse + vq_loss, {"recon_mse": mse, "vq_loss": vq_loss, "perplexity": perplexity}


def vq_tokenizer(name: str = "beit", **overrides: Any) -> VQTokenizer:
    """Preset tokenizers: ``"tiny"`` (p 4, K 16), ``"cifar"`` (p 4, K 512), ``"beit"``
    (p 8, K 8192, for 112 px inputs -> 14x14 ids); ``overrides`` set any attribute."""
    if name not in PRESETS:
        raise ValueError(f"vq_tokenizer preset {name!r} unknown; choose one of "
                         f"{sorted(PRESETS)}")
    return VQTokenizer(**{**PRESETS[name], **overrides})
