"""ViT and MAE: layout helpers, sin-cos positions, token subsets, masking, dtypes, grads."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models.mae import mae, random_masking
from jssl.models.vit import DropPath, patchify, sincos_2d_pos_embed, unpatchify, vit


# XLA:CPU compiles threefry slowly; the RBG generator keeps init cheap in tests.
def _key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def vit_tiny():
    x = _images((4, 16, 16, 3))
    model = vit("tiny")
    return jax.jit(lambda x: model.init(_key(), x))(x), x


@pytest.fixture(scope="module")
def mae_tiny():
    x = _images((2, 16, 16, 3), seed=1)
    model = mae("tiny")
    return jax.jit(lambda x: model.init({"params": _key(), "masking": _key(1)}, x))(x), x


def test_patchify_unpatchify_round_trip_and_layout():
    x = _images((2, 12, 8, 3))
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    xn = np.asarray(x)
    # patch (row 1, col 1) is raster index 1*2+1 = 3; pixels flattened as (p, p, C)
    np.testing.assert_array_equal(np.asarray(p[1, 3]), xn[1, 4:8, 4:8, :].reshape(-1))
    np.testing.assert_array_equal(np.asarray(unpatchify(p, 4, (3, 2), 3)), xn)
    with pytest.raises(ValueError, match="patch_size=5"):
        patchify(x, 5)


def test_sincos_matches_numpy_formula():
    dim, gh, gw = 16, 3, 5
    emb = sincos_2d_pos_embed(dim, (gh, gw), cls_token=True)
    assert emb.shape == (1 + gh * gw, dim) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[0], 0.0)
    q = dim // 4
    for i in range(gh):
        for j in range(gw):
            ref = np.zeros(dim)
            for k in range(q):
                omega = 1.0 / 10000 ** (k / q)
                ref[k], ref[q + k] = math.sin(j * omega), math.cos(j * omega)  # column (w)
                ref[2 * q + k], ref[3 * q + k] = math.sin(i * omega), math.cos(i * omega)
            np.testing.assert_allclose(emb[1 + i * gw + j], ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="dim=6"):
        sincos_2d_pos_embed(6, (2, 2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vit_shapes_and_dtypes(vit_tiny, dtype):
    variables, x = vit_tiny
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    outs = {}
    for pool in ("cls", "mean", "none"):
        model = vit("tiny", pool=pool, dtype=dtype)
        outs[pool] = jax.jit(lambda v, x, m=model: m.apply(v, x))(variables, x)
        assert outs[pool].dtype == dtype
    assert outs["cls"].shape == (4, 32) and outs["mean"].shape == (4, 32)
    assert outs["none"].shape == (4, 1 + 16, 32)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=5e-2, atol=5e-2)
    tokens = np.asarray(outs["none"], np.float32)
    np.testing.assert_allclose(np.asarray(outs["cls"], np.float32), tokens[:, 0], **tol)
    np.testing.assert_allclose(np.asarray(outs["mean"], np.float32),
                               tokens[:, 1:].mean(axis=1), **tol)


def test_vit_keep_ids_is_permutation_equivariant(vit_tiny):
    """Positions are added before the subset is taken and attention is permutation
    equivariant, so encoding patches in a permuted order permutes the output tokens, and a
    subset's tokens differ from the full sequence's (they attend to fewer tokens)."""
    variables, x = vit_tiny
    model = vit("tiny", pool="none")
    full = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    perm = np.stack([np.random.default_rng(i).permutation(16) for i in range(4)])
    f = jax.jit(lambda v, x, ids: model.apply(v, x, keep_ids=ids))
    permuted = f(variables, x, jnp.asarray(perm))
    np.testing.assert_allclose(permuted[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)
    ref = np.take_along_axis(np.asarray(full[:, 1:]), perm[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(permuted[:, 1:]), ref, rtol=1e-4, atol=1e-5)
    subset = f(variables, x, jnp.asarray(perm[:, :4]))
    assert subset.shape == (4, 5, 32)
    assert not np.allclose(np.asarray(subset[:, 1:]), ref[:, :4], atol=1e-3)


def test_vit_learned_positions_and_train_grads():
    model = vit("tiny", pos_embed="learned", pool="mean", dropout=0.1, drop_path_rate=0.2)
    x = _images((2, 8, 8, 1))
    variables = jax.jit(lambda x: model.init(_key(), x))(x)
    assert variables["params"]["pos_embed"].shape == (1, 4, 32)

    @jax.jit
    def grads(params):
        def loss(p):
            out = model.apply({"params": p}, x, train=True, rngs={"dropout": _key(5)})
            return jnp.mean(out ** 2)
        return jax.value_and_grad(loss)(params)

    value, g = grads(variables["params"])
    assert np.isfinite(value) and value > 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        if "cls_token" in str(path):  # pool='mean' ignores the cls output
            continue
        assert np.all(np.isfinite(leaf)) and np.any(np.asarray(leaf) != 0), path
    with pytest.raises(ValueError, match="learned pos_embed holds 4"):
        model.apply(variables, _images((2, 12, 12, 1)))


def test_drop_path_statistics():
    rate, n = 0.25, 4000
    x = jnp.ones((n, 3, 2))
    y = np.asarray(DropPath(rate).apply({}, x, deterministic=False, rngs={"dropout": _key(3)}))
    dropped = np.all(y == 0, axis=(1, 2))
    assert np.all(y[~dropped] == pytest.approx(1 / (1 - rate)))
    # binomial(4000, 0.25): std of the fraction ~0.0068; 5 sigma bound
    assert abs(dropped.mean() - rate) < 0.035
    assert abs(y.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(DropPath(rate).apply({}, x, deterministic=True), x)


@pytest.mark.parametrize("kw,match", [(dict(pool="max"), "pool='max'"),
                                      (dict(pool="cls", use_cls=False), "use_cls=True"),
                                      (dict(pos_embed="rope"), "pos_embed='rope'"),
                                      (dict(num_heads=3), "num_heads=3")])
def test_vit_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: vit("tiny", **kw).init(_key(), jnp.zeros((1, 8, 8, 3))))


def test_random_masking_convention():
    ids_keep, ids_restore, mask = random_masking(_key(2), 3, 16, 0.75)
    assert ids_keep.shape == (3, 4) and ids_restore.shape == (3, 16)
    for b in range(3):
        kept = np.asarray(ids_keep[b])
        assert len(set(kept.tolist())) == 4
        np.testing.assert_array_equal(np.asarray(mask[b])[kept], 0.0)
        assert np.asarray(mask[b]).sum() == 12
        # ids_restore inverts the shuffle: the shuffled order re-indexed gives 0..L-1
        shuffle = np.argsort(np.asarray(ids_restore[b]))
        np.testing.assert_array_equal(shuffle[:4], kept)
        np.testing.assert_array_equal(shuffle[np.asarray(ids_restore[b])], np.arange(16))
    with pytest.raises(ValueError, match="mask_ratio=1.0"):
        random_masking(_key(), 1, 16, 1.0)


def test_mae_shapes_and_encoder_sees_visible_patches_only(mae_tiny):
    variables, x = mae_tiny
    model = mae("tiny")
    out, inter = jax.jit(lambda v, x: model.apply(v, x, rngs={"masking": _key(7)},
                                                  mutable=["intermediates"]))(variables, x)
    num_patches, len_keep = 16, int(16 * (1 - 0.75))
    assert out.pred.shape == (2, num_patches, 48) and out.pred.dtype == jnp.float32
    assert out.mask.shape == (2, num_patches)
    np.testing.assert_array_equal(np.asarray(out.mask).sum(axis=1), num_patches - len_keep)
    np.testing.assert_array_equal(np.asarray(out.target), np.asarray(patchify(x, 4)))
    # the encoder ran on len_keep + 1 tokens (visible + cls): MAE's 4x shorter sequence
    assert out.latent.shape == (2, len_keep + 1, 32)
    (sown,) = inter["intermediates"]["encoder"]["tokens"]
    assert sown.shape == (2, len_keep + 1, 32)
    # the sampled ids, passed explicitly, reproduce mask, latent and prediction
    ids_restore = out.ids_restore
    ids_keep = jnp.argsort(ids_restore, axis=1)[:, :len_keep]
    mask = (np.asarray(ids_restore) >= len_keep).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(out.mask), mask)
    explicit = jax.jit(lambda v, x, k, r: model.apply(v, x, ids_keep=k, ids_restore=r))(
        variables, x, ids_keep, ids_restore)
    np.testing.assert_array_equal(np.asarray(explicit.mask), np.asarray(mask))
    np.testing.assert_allclose(explicit.pred, out.pred, rtol=1e-5, atol=1e-6)
    # the latent is the ViT encoder on the kept patches
    enc = vit("tiny", pool="none")
    lat = jax.jit(lambda p, x, k: enc.apply({"params": p}, x, keep_ids=k))(
        variables["params"]["encoder"], x, ids_keep)
    np.testing.assert_allclose(lat, out.latent, rtol=1e-5, atol=1e-5)


def test_mae_jit_grads_and_bfloat16(mae_tiny):
    variables, x = mae_tiny
    model = mae("tiny", dtype=jnp.bfloat16)

    @jax.jit
    def step(params):
        def loss(p):
            o = model.apply({"params": p}, x, rngs={"masking": _key(3)})
            per_patch = jnp.mean((o.pred - o.target) ** 2, axis=-1)
            return jnp.sum(per_patch * o.mask) / jnp.sum(o.mask), o
        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, o), grads = step(variables["params"])
    assert o.pred.dtype == jnp.float32 and o.latent.dtype == jnp.bfloat16
    assert np.isfinite(value) and value > 0
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert g.dtype == jnp.float32, path
        assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0), path


def test_mae_presets_and_errors():
    model = mae("vit_b16")
    assert (model.dim, model.depth, model.decoder_dim, model.decoder_depth,
            model.decoder_heads) == (768, 12, 512, 8, 16)
    x = jnp.zeros((1, 224, 224, 3))
    shapes = jax.eval_shape(lambda: model.init({"params": _key(), "masking": _key()}, x))
    out = jax.eval_shape(lambda v: model.apply(v, x, rngs={"masking": _key()}), shapes)
    assert out.latent.shape == (1, 49 + 1, 768) and out.pred.shape == (1, 196, 768)
    with pytest.raises(ValueError, match="together"):
        jax.eval_shape(lambda: mae("tiny").init(_key(), jnp.zeros((1, 16, 16, 3)),
                                                ids_keep=jnp.zeros((1, 4), jnp.int32)))
    with pytest.raises(ValueError, match="channels"):
        jax.eval_shape(lambda: mae("tiny").init({"params": _key(), "masking": _key()},
                                                jnp.zeros((1, 16, 16, 1))))


def test_attention_impl_xla_is_flax_attention_and_cudnn_needs_a_gpu():
    """``attention="xla"`` is Flax's attention (head-major on CPU): the same output as a NumPy
    softmax(q·kᵀ/√d)·v; "cudnn" off a GPU and unknown names fail with one clear line."""
    from jssl.models.vit import attention_fn

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 3, 8)).astype(np.float32) for _ in range(3))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bhqk,bkhd->bqhd", p, v)
    out = np.asarray(attention_fn("xla")(q, k, v))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention='nope' is unknown"):
        attention_fn("nope")
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="attention='cudnn' needs a GPU backend"):
            vit("tiny", attention="cudnn").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_padded_attention_equals_unpadded_attention_and_its_gradient():
    """The cuDNN path pads 197-like odd token counts to a multiple of 8 and masks the padded
    keys by length: with the XLA kernel the output and the gradients equal a NumPy
    softmax(q·kᵀ/√d)·v on the unpadded tokens (the same code runs with cuDNN on a GPU)."""
    from jssl.models.vit import padded_attention

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 13, 3, 8)).astype(np.float32) for _ in range(3))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bhqk,bkhd->bqhd", p, v)
    out = padded_attention(q, k, v, multiple=8, implementation="xla")
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)

    def loss(fn, q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v)))

    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v)  # noqa: E731
    padded = lambda q, k, v: padded_attention(q, k, v, multiple=8,  # noqa: E731
                                              implementation="xla")
    g_ref = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(q, k, v)
    g_pad = jax.grad(lambda *a: loss(padded, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_pad, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # Already a multiple: no padding, the plain call.
    np.testing.assert_allclose(np.asarray(padded_attention(q[:, :8], k[:, :8], v[:, :8],
                                                           multiple=8, implementation="xla")),
                               np.asarray(plain(q[:, :8], k[:, :8], v[:, :8])), rtol=1e-6)


def test_distinct_take_tokens_gradient_is_the_plain_gathers_bit_for_bit():
    """``take_tokens(distinct=True)``'s custom VJP (a gather through ``inverse_ids``) gives the
    plain gather's values and the same gradient as a NumPy scatter of dy onto the taken
    tokens (zeros elsewhere), for a visible subset and for a full permutation."""
    from jssl.models import vit as vit_mod

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 10, 4)).astype(np.float32)
    perm = np.stack([rng.permutation(10) for _ in range(3)]).astype(np.int32)
    for ids in (perm[:, :4], perm):
        dy = rng.standard_normal((3, ids.shape[1], 4)).astype(np.float32)
        out = vit_mod.take_tokens(jnp.asarray(x), jnp.asarray(ids), distinct=True)
        np.testing.assert_array_equal(np.asarray(out), x[np.arange(3)[:, None], ids])
        grad = jax.grad(lambda x, ids=ids, dy=dy: jnp.sum(
            vit_mod.take_tokens(x, jnp.asarray(ids), distinct=True) * dy))(jnp.asarray(x))
        ref = np.zeros_like(x)
        for b in range(3):
            ref[b, ids[b]] = dy[b]
        np.testing.assert_array_equal(np.asarray(grad), ref)
        plain = jax.grad(lambda x, ids=ids, dy=dy: jnp.sum(
            vit_mod.take_tokens(x, jnp.asarray(ids)) * dy))(jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(grad), np.asarray(plain))
    inv = np.asarray(vit_mod.inverse_ids(jnp.asarray(perm[:, :4]), 10))
    for b in range(3):
        for j in range(10):
            assert inv[b, j] == (list(perm[b, :4]).index(j) if j in perm[b, :4] else 4)


def test_patch_embed_matmul_equals_the_strided_convolution(monkeypatch):
    """``PATCH_EMBED_MATMUL``: the same params (names, shapes, initial values) and, to
    float32 rounding, the same tokens and gradients as the stride-p convolution."""
    from jssl.models import vit as vit_mod

    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3))
    model = vit_mod.vit("tiny", pool="mean")
    monkeypatch.setattr(vit_mod, "PATCH_EMBED_MATMUL", False)
    conv_vars = jax.jit(model.init)(jax.random.key(0), x)
    conv_out, conv_grad = jax.jit(jax.value_and_grad(
        lambda v: jnp.sum(jnp.sin(model.apply(v, x)))))(conv_vars)
    monkeypatch.setattr(vit_mod, "PATCH_EMBED_MATMUL", True)
    mm_vars = jax.jit(model.init)(jax.random.key(0), x)
    assert jax.tree.structure(mm_vars) == jax.tree.structure(conv_vars)
    for a, b in zip(jax.tree.leaves(mm_vars), jax.tree.leaves(conv_vars), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mm_out, mm_grad = jax.jit(jax.value_and_grad(
        lambda v: jnp.sum(jnp.sin(model.apply(v, x)))))(conv_vars)
    np.testing.assert_allclose(float(mm_out), float(conv_out), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(mm_grad), jax.tree.leaves(conv_grad), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_sequence_padded_once_equals_the_unpadded_mae(monkeypatch):
    """``PAD_SEQUENCE_ONCE``: tokens padded once before the blocks, padded keys masked
    (here through the XLA kernel, as cuDNN excludes them by length), padded rows sliced off:
    MAE's encoder tokens (a ViT: 4 visible + cls = 5 tokens, padded to 8), its decoder's
    predictions (17 tokens, padded to 24) and all gradients equal the unpadded model's."""
    from jssl.models import vit as vit_mod
    from jssl.models.mae import mae

    x = jax.random.uniform(jax.random.key(4), (2, 16, 16, 3))
    model = mae("tiny", channels=3)
    variables = jax.jit(model.init)({"params": jax.random.key(0),
                                     "masking": jax.random.key(1)}, x)

    def loss(v):
        out = model.apply(v, x, rngs={"masking": jax.random.key(5)})
        return jnp.sum(jnp.sin(out.pred)) + jnp.sum(jnp.cos(out.latent))

    # jitted afresh for each side, so the switches apply at trace time
    plain_loss, plain_grad = jax.jit(jax.value_and_grad(loss))(variables)
    monkeypatch.setattr(vit_mod, "PAD_SEQUENCE_ONCE", True)
    monkeypatch.setattr(vit_mod, "SEQUENCE_PAD_IMPLS", ("xla",))
    assert vit_mod.sequence_padding("xla", 17) == 7  # to 24 with CUDNN_SEQ_MULTIPLE = 8
    assert vit_mod.sequence_padding("xla", 5) == 3
    padded_loss, padded_grad = jax.jit(jax.value_and_grad(loss))(variables)
    np.testing.assert_allclose(float(padded_loss), float(plain_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(padded_grad), jax.tree.leaves(plain_grad), strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_cudnn_path_sends_short_sequences_to_xla(monkeypatch):
    """``CUDNN_MIN_TOKENS``: the cuDNN path's attention runs sequences shorter than it through
    XLA's kernel (so here, on CPU, it runs at all), equal to a NumPy softmax(q·kᵀ/√d)·v, with
    and without keys excluded by ``valid_tokens``; below the bound it asks cuDNN."""
    from jssl.models import vit as vit_mod

    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 16, 2, 8)).astype(np.float32) for _ in range(3))

    def reference(t):
        logits = np.einsum("bqhd,bkhd->bhqk", q[:, :t], k[:, :t]) / np.sqrt(8)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v[:, :t])

    monkeypatch.setattr(vit_mod, "CUDNN_MIN_TOKENS", 17)
    out = vit_mod.fused_attention(q, k, v)
    np.testing.assert_allclose(np.asarray(out), reference(16), rtol=1e-5, atol=1e-5)
    out = vit_mod.fused_attention(q, k, v, valid_tokens=13)
    np.testing.assert_allclose(np.asarray(out)[:, :13], reference(13), rtol=1e-5, atol=1e-5)
    if jax.default_backend() != "gpu":
        monkeypatch.setattr(vit_mod, "CUDNN_MIN_TOKENS", 16)
        with pytest.raises(Exception):  # noqa: B017 - 16 tokens go to cuDNN, absent on CPU
            vit_mod.fused_attention(q, k, v)


@pytest.mark.parametrize("case", ["plain", "mask", "bias", "bf16_fp32_softmax"])
def test_head_major_attention_is_flax_attention(case):
    """jssl.models.head_major computes Flax's attention: values and gradients (float32) or
    values and dtype (bfloat16 with a float32 softmax) as nn.dot_product_attention."""
    import flax.linen as nn

    from jssl.models.head_major import head_major_attention

    rng = np.random.default_rng(1)
    q, k, v, g = (jnp.asarray(rng.standard_normal((3, 6, 2, 8)), jnp.float32)
                  for _ in range(4))
    kw = dict(deterministic=True)
    if case == "mask":
        kw["mask"] = jnp.asarray(rng.random((3, 1, 6, 6)) > 0.4).at[..., 0].set(True)
    if case == "bias":
        kw["bias"] = jnp.asarray(rng.standard_normal((3, 2, 6, 6)), jnp.float32)
    if case == "bf16_fp32_softmax":
        q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
        kw["force_fp32_for_softmax"] = True
    ours = head_major_attention(q, k, v, **kw)
    flax_out = nn.dot_product_attention(q, k, v, **kw)
    assert ours.dtype == flax_out.dtype and ours.shape == flax_out.shape
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(flax_out, np.float32),
                               rtol=1e-5, atol=1e-6)
    if case != "bf16_fp32_softmax":
        def grads(fn):
            return jax.grad(lambda q, k, v: jnp.vdot(fn(q, k, v, **kw), g), (0, 1, 2))(q, k, v)
        for a, b in zip(grads(head_major_attention), grads(nn.dot_product_attention),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_head_major_attention_dropout_is_flax_and_the_switch(monkeypatch):
    """With attention dropout the call is Flax's own (same keep mask for the same key); the
    CPU "xla" attention is head-major by default (None) and Flax's with the switch False."""
    import flax.linen as nn

    from jssl.models import head_major
    from jssl.models import vit as vit_lib
    from jssl.models.head_major import head_major_attention

    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 5, 2, 4)), jnp.float32) for _ in range(3))
    kw = dict(dropout_rate=0.3, deterministic=False, dropout_rng=jax.random.key(3))
    np.testing.assert_array_equal(head_major_attention(q, k, v, **kw),
                                  nn.dot_product_attention(q, k, v, **kw))
    assert vit_lib.attention_fn("xla") is head_major_attention  # tests run on CPU
    monkeypatch.setattr(head_major, "ENABLED", False)
    assert vit_lib.attention_fn("xla") is nn.dot_product_attention
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32)
    model = vit("tiny")
    variables = model.init(jax.random.key(0), x)
    flax_tokens = model.apply(variables, x)
    monkeypatch.setattr(head_major, "ENABLED", None)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), np.asarray(flax_tokens),
                               rtol=1e-5, atol=1e-5)
