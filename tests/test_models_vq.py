"""BEiT visual tokenizer (VQ-VAE): ids, perplexity, straight-through gradients, training."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jssl.models.vq_tokenizer import VQTokenizer, vq_tokenizer, vq_vae_loss


# XLA:CPU compiles threefry slowly; the RBG generator keeps init cheap in tests.
def _key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


@pytest.fixture(scope="module")
def tiny():
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 3)), jnp.float32)
    model = vq_tokenizer("tiny")
    return model, jax.jit(lambda x: model.init(_key(), x))(images)["params"], images


def test_ids_perplexity_and_vq_loss_match_numpy(tiny):
    model, params, images = tiny
    recon, ids, vq_loss, ppl = jax.jit(lambda p, x: model.apply({"params": p}, x))(params,
                                                                                   images)
    assert recon.shape == images.shape and recon.dtype == jnp.float32
    assert ids.shape == (4, 4, 4) and ids.dtype == jnp.int32
    ids_np = np.asarray(ids)
    assert ids_np.min() >= 0 and ids_np.max() < 16
    # nearest code in NumPy from the encoder latent
    run = jax.jit(lambda p, x, method: model.apply({"params": p}, x, method=method),
                  static_argnums=2)
    z = np.asarray(run(params, images, VQTokenizer._encode_latent))
    e = np.asarray(params["codebook"])
    d = ((z[..., None, :] - e) ** 2).sum(-1)
    np.testing.assert_array_equal(ids_np, d.argmin(-1))
    np.testing.assert_array_equal(
        np.asarray(run(params, images, VQTokenizer.encode)), ids_np)
    # perplexity = exp(entropy of code usage)
    p = np.bincount(ids_np.ravel(), minlength=16) / ids_np.size
    ref_ppl = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
    np.testing.assert_allclose(ppl, ref_ppl, rtol=1e-5)
    assert 1.0 <= float(ppl) <= 16.0
    # vq loss = (1 + beta) * mean ||z - e_id||^2 in the forward pass
    ref_vq = 1.25 * np.mean((z - e[ids_np]) ** 2)
    np.testing.assert_allclose(vq_loss, ref_vq, rtol=1e-5)


def test_l2_normalized_lookup_matches_numpy(tiny):
    """ViT-VQGAN codes: nearest by cosine, losses on unit vectors, decoder sees unit codes."""
    _, params, images = tiny
    plain, normed = vq_tokenizer("tiny"), vq_tokenizer("tiny", l2_normalize=True)
    run = jax.jit(lambda p, x, model: model.apply({"params": p}, x), static_argnums=2)
    _, ids, vq_loss, _ = run(params, images, normed)
    z = np.asarray(jax.jit(lambda p, x: plain.apply({"params": p}, x,
                                                    method=VQTokenizer._encode_latent))(
        params, images), np.float64)
    e = np.asarray(params["codebook"], np.float64)
    zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
    en = e / np.linalg.norm(e, axis=-1, keepdims=True)
    ids_np = np.asarray(ids)
    np.testing.assert_array_equal(ids_np, (zn @ en.T).argmax(-1))
    np.testing.assert_allclose(vq_loss, 1.25 * np.mean((zn - en[ids_np]) ** 2), rtol=1e-4)
    codes = np.asarray(normed.apply({"params": params}, method=VQTokenizer.codes))
    np.testing.assert_allclose(codes, en, rtol=1e-5, atol=1e-6)
    # the unnormalised lookup picks other codes on the same latents (codes at +-1/K)
    assert not np.array_equal(ids_np, np.asarray(run(params, images, plain)[1]))


def test_straight_through_gradients_reach_encoder(tiny):
    model, params, images = tiny
    (loss, metrics), grads = jax.jit(jax.value_and_grad(
        lambda p, x: vq_vae_loss(p, x, model=model), has_aux=True))(params, images)
    assert np.isfinite(loss) and set(metrics) == {"recon_mse", "vq_loss", "perplexity"}
    for name in ("enc_in", "enc_down_0", "enc_down_1", "enc_out", "dec_in", "dec_out"):
        g = np.asarray(grads[name]["kernel"])
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0, name
    # only used codes receive codebook-loss gradient
    used = np.unique(np.asarray(jax.jit(lambda p, x: model.apply(
        {"params": p}, x, method=VQTokenizer.encode))(params, images)))
    row_has_grad = np.abs(np.asarray(grads["codebook"])).sum(1) > 0
    np.testing.assert_array_equal(np.flatnonzero(row_has_grad), used)


def test_adam_steps_reduce_loss(tiny):
    model, params, images = tiny
    opt = optax.adam(3e-3)

    @jax.jit
    def train(params):
        def body(carry, _):
            p, s = carry
            (loss, _), g = jax.value_and_grad(vq_vae_loss, has_aux=True)(p, images, model=model)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss
        (p, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=30)
        final, _ = vq_vae_loss(p, images, model=model)
        return losses, final

    losses, final = train(params)
    assert np.all(np.isfinite(losses))
    assert float(final) < 0.7 * float(losses[0])


def test_decode_ids_and_bf16(tiny):
    model, params, images = tiny
    bf = vq_tokenizer("tiny", dtype=jnp.bfloat16)
    recon, ids, vq_loss, _ = jax.jit(lambda p, x: bf.apply({"params": p}, x))(params, images)
    assert recon.dtype == jnp.float32 and vq_loss.dtype == jnp.float32
    dec = jax.jit(lambda p, i: bf.apply({"params": p}, i, method=VQTokenizer.decode_ids))(
        params, ids)
    np.testing.assert_allclose(dec, recon, rtol=1e-5, atol=1e-5)  # straight-through: same
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("kw,match", [(dict(patch_size=6), "patch_size=6"),
                                      (dict(codebook_size=1), "codebook_size=1")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: vq_tokenizer("tiny", **kw).init(_key(),
                                                               jnp.zeros((1, 16, 16, 3))))
    with pytest.raises(ValueError, match="unknown"):
        vq_tokenizer("dalle")


def test_bfloat16_models_keep_float32_params():
    """Every model built with ``dtype=bfloat16`` creates float32 params (and stats)."""
    from jssl.models.heads import DINOHead, LinearClassifier, PredictorMLP, ProjectionMLP
    from jssl.models.mae import mae
    from jssl.models.resnet import resnet
    from jssl.models.vit import vit

    bf = jnp.bfloat16
    img, feats = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2, 12))
    rngs = {"params": _key(), "masking": _key()}
    cases = [(resnet("tiny", dtype=bf), img, {"train": False}), (vit("tiny", dtype=bf), img, {}),
             (mae("tiny", dtype=bf), img, {}), (vq_tokenizer("tiny", dtype=bf), img, {}),
             (ProjectionMLP(8, 4, dtype=bf), feats, {"train": False}),
             (PredictorMLP(8, 4, dtype=bf), feats, {"train": False}),
             (DINOHead(16, 8, 4, dtype=bf), feats, {"train": False}),
             (LinearClassifier(3, use_bn=True, dtype=bf), feats, {"train": False})]
    for model, x, kw in cases:
        shapes = jax.eval_shape(lambda m=model, x=x, kw=kw: m.init(rngs, x, **kw))
        for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
            assert leaf.dtype == jnp.float32, (type(model).__name__, path)
