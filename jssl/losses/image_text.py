"""Image–text contrastive losses: CLIP (softmax) and SigLIP (sigmoid).

Both take embeddings as given: the two-tower model L2-normalises them, as in
CLIP and SigLIP. ``logit_scale`` is the multiplier t (already exponentiated:
the model keeps log t as its parameter), ``logit_bias`` the additive b.

Under ``shard_map`` (``axis_name`` set) the other tower is all-gathered and
each device scores its local rows against all N columns ([n, N] logits), with
the positives at column ``axis_index·n + i``. Value and gradient (embeddings,
scale and bias) equal the global computation; see tests/test_losses_contrastive.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import (
    AxisName,
    as_f32,
    axis_index,
    check_impl,
    check_ndim,
    check_same_shape,
    gather,
    global_mean,
    matmul_t,
)
from jssl.losses.ring import clip_ring, siglip_ring


def _check_scalar(name: str, x) -> None:
    if jnp.ndim(x) != 0:
        raise ValueError(
            f"{name} must be a scalar, got shape {tuple(jnp.shape(x))}; pass the single "
            f"learnable {name} of the model"
        )


def _check_pair(image_emb, text_emb) -> None:
    check_ndim("image_emb", image_emb, 2, "[batch, dim]")
    check_same_shape("image_emb", image_emb, "text_emb", text_emb)


def clip(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    *,
    axis_name: AxisName = None,
    impl: str = "gather",
    block_size: int = 1024,
) -> jax.Array:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021).

    With logits L_ij = t · x_i·y_j over the N image/text pairs of the global batch:

        loss = ½ [ mean_i CE(L_i·, i) + mean_j CE(L_·j, j) ]

    i.e. the mean of the image→text and text→image cross-entropies.

    Args:
      image_emb, text_emb: [B, D] (L2-normalised by the model).
      logit_scale: scalar t = exp(learned log-scale), e.g. 1/0.07 at init.
      impl: "gather" (all-gather, [n, N] logits per device) or "ring" (text blocks
        travel by ``ppermute``; one fused pass gives row and column log-sum-exps;
        O(n·D) memory; see ``jssl.losses.ring``).
      block_size: tile edge for ``impl="ring"``.
    """
    _check_pair(image_emb, text_emb)
    _check_scalar("logit_scale", logit_scale)
    check_impl(impl, block_size)
    n = image_emb.shape[0]
    if impl == "ring":
        local = clip_ring(image_emb, text_emb, logit_scale, axis_name, block_size)
        return global_mean(local, n, axis_name)
    img, txt = as_f32(image_emb), as_f32(text_emb)
    scale = as_f32(logit_scale)
    all_img, all_txt = gather(img, axis_name), gather(txt, axis_name)
    labels = axis_index(axis_name) * n + jnp.arange(n)
    logits_i2t = scale * matmul_t(img, all_txt)  # [n, N]
    logits_t2i = scale * matmul_t(txt, all_img)  # [n, N]

    def ce(logits):
        picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        return jnp.sum(jax.nn.logsumexp(logits, axis=-1) - picked)

    return global_mean(0.5 * (ce(logits_i2t) + ce(logits_t2i)), n, axis_name)


def siglip(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
    *,
    axis_name: AxisName = None,
    impl: str = "gather",
    block_size: int = 1024,
) -> jax.Array:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, eq. 1).

    Every one of the N² image/text pairs is an independent binary problem with
    label z_ij = +1 on the diagonal and −1 elsewhere:

        loss = −(1/N) Σ_i Σ_j log σ(z_ij · (t · x_i·y_j + b))

    normalised by N (not N²), as in the paper.

    Args:
      image_emb, text_emb: [B, D] (L2-normalised by the model).
      logit_scale: scalar t = exp(learned log t) (10 at init in the paper).
      logit_bias: scalar b (−10 at init in the paper).
      impl: "gather" or "ring" (the chunked ring of SigLIP §3.3, with a
        recomputing custom VJP so memory stays O(n·D); see ``jssl.losses.ring``).
      block_size: tile edge for ``impl="ring"``.
    """
    _check_pair(image_emb, text_emb)
    _check_scalar("logit_scale", logit_scale)
    _check_scalar("logit_bias", logit_bias)
    check_impl(impl, block_size)
    n = image_emb.shape[0]
    if impl == "ring":
        local = siglip_ring(image_emb, text_emb, logit_scale, logit_bias, axis_name, block_size)
        return global_mean(local, n, axis_name)
    img, txt = as_f32(image_emb), as_f32(text_emb)
    all_txt = gather(txt, axis_name)
    logits = as_f32(logit_scale) * matmul_t(img, all_txt) + as_f32(logit_bias)  # [n, N]
    diag = axis_index(axis_name) * n + jnp.arange(n)
    z = jnp.where(jnp.arange(all_txt.shape[0])[None, :] == diag[:, None], 1.0, -1.0)
    return global_mean(-jnp.sum(jax.nn.log_sigmoid(z * logits)), n, axis_name)
