"""Heads (projection, predictor, DINO, linear) and the CLIP/SigLIP two-tower model."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharded_check import make_mesh

from jssl.models.heads import (
    LAST_LAYER,
    DINOHead,
    LinearClassifier,
    PredictorMLP,
    ProjectionMLP,
    WeightNormDense,
    dino_head,
    last_layer_mask,
)
from jssl.models.two_tower import _mode_kwargs, two_tower
from jssl.models.vit import vit


# XLA:CPU compiles threefry slowly; the RBG generator keeps init cheap in tests.
def _key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _np_bn(h):
    mu, var = h.mean(0), h.var(0)
    return (h - mu) / np.sqrt(var + 1e-5)


def _gelu(h):
    return 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def test_predictor_matches_numpy_and_updates_stats():
    model = PredictorMLP(hidden_dim=16, out_dim=6)
    x = _x((8, 10))
    v = jax.jit(lambda x: model.init(_key(), x, train=False))(x)
    out, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        v, x)
    p = jax.tree.map(np.asarray, v["params"])
    h = np.asarray(x) @ p["linear0"]["kernel"]  # no bias before BN
    ref = np.maximum(_np_bn(h) * p["bn0"]["scale"] + p["bn0"]["bias"], 0)
    ref = ref @ p["linear1"]["kernel"] + p["linear1"]["bias"]
    assert out.shape == (8, 6) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["bn0"]["mean"], 0.1 * h.mean(0), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["bn0"]["var"], 0.9 + 0.1 * h.var(0),
                               rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_projection_last_bn_standardises_and_dtypes(dtype):
    model = ProjectionMLP(hidden_dim=16, out_dim=8, num_layers=3, last_bn=True, dtype=dtype)
    x = _x((32, 12))
    v = jax.jit(lambda x: model.init(_key(), x, train=False))(x)
    assert "bias" not in v["params"]["linear2"] and "bn2" not in v["params"]  # affine=False
    out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    assert out.shape == (32, 8) and out.dtype == jnp.float32
    for leaf in jax.tree.leaves(v):
        assert leaf.dtype == jnp.float32
    tol = 1e-4 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(out).mean(0), 0.0, atol=tol)
    np.testing.assert_allclose(np.asarray(out).std(0), 1.0, atol=tol * 10)


def test_projection_sync_bn_shard_map_equals_global():
    model = ProjectionMLP(hidden_dim=16, out_dim=8, last_bn=True, last_bn_affine=True)
    sync = ProjectionMLP(hidden_dim=16, out_dim=8, last_bn=True, last_bn_affine=True,
                         axis_name="data")
    x = _x((16, 12), seed=4)
    v = jax.jit(lambda x: model.init(_key(), x, train=False))(x)
    ref_out, ref_upd = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                                        mutable=["batch_stats"]))(v, x)
    mesh = make_mesh((8,), ("data",))
    f = jax.jit(jax.shard_map(
        lambda v, xs: sync.apply(v, xs, train=True, mutable=["batch_stats"]), mesh=mesh,
        in_specs=(P(), P("data")), out_specs=(P("data"), P())))
    out, upd = f(jax.device_put(v, NamedSharding(mesh, P())),
                 jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_upd), jax.tree.leaves(upd), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_weight_norm_dense_matches_formula():
    x = _x((5, 6))
    free = WeightNormDense(4, fixed_g=False)
    v = free.init(_key(), x)
    g = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
    v = {"params": {"kernel": v["params"]["kernel"], "g": jnp.asarray(g)}}
    kernel = np.asarray(v["params"]["kernel"])
    ref = np.asarray(x) @ (g * kernel / np.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(free.apply(v, x), ref, rtol=1e-5, atol=1e-6)
    fixed = WeightNormDense(4, fixed_g=True)
    assert set(fixed.init(_key(), x)["params"]) == {"kernel"}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dino_head_matches_numpy_and_unit_norm_prototypes(dtype):
    head = dino_head("tiny", dtype=dtype)
    x = _x((4, 20))
    v = jax.jit(lambda x: head.init(_key(), x))(x)
    out = jax.jit(lambda v, x: head.apply(v, x))(v, x)
    assert out.shape == (4, 64) and out.dtype == jnp.float32
    p = jax.tree.map(np.asarray, v["params"])
    assert set(p[LAST_LAYER]) == {"kernel"}  # norm_last_layer: g fixed to 1, not a param
    h = np.asarray(x)
    for i in range(2):
        h = _gelu(h @ p[f"linear{i}"]["kernel"] + p[f"linear{i}"]["bias"])
    h = h @ p["linear2"]["kernel"] + p["linear2"]["bias"]
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
    w = p[LAST_LAYER]["kernel"] / np.linalg.norm(p[LAST_LAYER]["kernel"], axis=0)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == jnp.float32 else dict(rtol=5e-2, atol=2e-2)
    np.testing.assert_allclose(out, h @ w, **tol)
    # logits are cosines of unit vectors: bounded by 1
    assert np.all(np.abs(np.asarray(out)) <= 1 + 1e-2)


def test_dino_head_grads_and_freeze_mask():
    head = DINOHead(out_dim=32, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False,
                    use_bn=True)
    x = _x((6, 10))
    v = jax.jit(lambda x: head.init(_key(), x, train=False))(x)
    assert set(v["params"][LAST_LAYER]) == {"kernel", "g"}

    @jax.jit
    def grads(params):
        def loss(p):
            logits, _ = head.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                                   train=True, mutable=["batch_stats"])
            return -jnp.mean(jax.nn.log_softmax(logits / 0.1)[:, 0])
        return jax.grad(loss)(params)

    g = grads(v["params"])
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        assert np.all(np.isfinite(leaf)) and np.any(np.asarray(leaf) != 0), path
    mask = last_layer_mask(v["params"])
    flags = {jax.tree_util.keystr(k): m for k, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert flags["['last_layer']['kernel']"] and flags["['last_layer']['g']"]
    assert sum(flags.values()) == 2
    assert DINOHead().out_dim == 65536 and dino_head("paper").bottleneck_dim == 256


def test_linear_classifier():
    clf = LinearClassifier(num_classes=5, use_bn=True)
    x = _x((8, 7))
    v = jax.jit(lambda x: clf.init(_key(), x, train=False))(x)
    assert set(v["batch_stats"]["bn"]) == {"mean", "var"} and "bn" not in v["params"]
    labels = jnp.arange(8) % 5

    def loss(p):
        logits, _ = clf.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                              mutable=["batch_stats"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    value, g = jax.jit(jax.value_and_grad(loss))(v["params"])
    np.testing.assert_allclose(value, math.log(5), rtol=1e-6)  # zero-init: uniform logits
    assert np.all(np.isfinite(g["linear"]["kernel"])) and np.any(g["linear"]["kernel"] != 0)
    with pytest.raises(ValueError, match="num_classes=0"):
        LinearClassifier(num_classes=0).init(_key(), x)


class _TextTower(nn.Module):
    """Tiny text tower for the tests: token embedding + mean pool over non-pad tokens."""

    vocab: int = 50
    dim: int = 24

    @nn.compact
    def __call__(self, tokens):
        e = nn.Embed(self.vocab, self.dim)(tokens)
        m = (tokens > 0)[..., None].astype(e.dtype)
        return jnp.sum(e * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)


@pytest.fixture(scope="module")
def clip_setup():
    images = _x((4, 8, 8, 3))
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 50, (4, 6)), jnp.int32)
    model = two_tower("clip", vit("tiny"), _TextTower(), embed_dim=16)
    v = jax.jit(lambda i, t: model.init(_key(), i, t))(images, tokens)
    return model, v, images, tokens


def test_two_tower_outputs_and_projections(clip_setup):
    model, v, images, tokens = clip_setup
    img, txt, scale, bias = jax.jit(lambda v, i, t: model.apply(v, i, t))(v, images, tokens)
    assert img.shape == (4, 16) and txt.shape == (4, 16) and bias is None
    assert img.dtype == txt.dtype == jnp.float32
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)
    p = v["params"]
    feats = jax.jit(lambda p, x: vit("tiny").apply({"params": p}, x))(p["image_encoder"], images)
    ref = np.asarray(feats) @ np.asarray(p["image_proj"]["kernel"])
    np.testing.assert_allclose(img, ref / np.linalg.norm(ref, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(txt), axis=1), 1.0, rtol=1e-5)
    bf = two_tower("clip", vit("tiny", dtype=jnp.bfloat16), _TextTower(), embed_dim=16,
                   dtype=jnp.bfloat16)
    img16, txt16, _, _ = jax.jit(lambda v, i, t: bf.apply(v, i, t))(v, images, tokens)
    assert img16.dtype == jnp.float32
    np.testing.assert_allclose(img16, img, atol=5e-2)


def test_two_tower_clip_loss_grads_and_clamp(clip_setup):
    model, v, images, tokens = clip_setup

    def loss(p):
        img, txt, scale, _ = model.apply({"params": p}, images, tokens, train=True)
        logits = scale * img @ txt.T
        labels = jnp.arange(4)[:, None]
        return -0.5 * (jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels, 1))
                       + jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits.T), labels, 1)))

    step = jax.jit(jax.value_and_grad(loss))
    value, g = step(v["params"])
    assert np.isfinite(value)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        assert np.all(np.isfinite(leaf)) and np.any(np.asarray(leaf) != 0), path
    # beyond ln(100) the forward scale is clamped to 100 and logit_scale gets no gradient
    clamped = {**v["params"], "logit_scale": jnp.asarray(5.0)}
    scale, _ = model.apply({"params": clamped}, method=model.temperature)
    np.testing.assert_allclose(scale, 100.0, rtol=1e-5)
    _, g_clamped = step(clamped)
    assert float(g_clamped["logit_scale"]) == 0.0


def test_two_tower_siglip_and_errors():
    model = two_tower("siglip", vit("tiny"), _TextTower(), embed_dim=8)
    images, tokens = jnp.zeros((2, 8, 8, 3)), jnp.ones((2, 5), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(_key(), images, tokens))
    assert shapes["params"]["logit_bias"].shape == ()
    v = {"params": {**shapes["params"], "logit_scale": jnp.asarray(math.log(10.0)),
                    "logit_bias": jnp.asarray(-10.0)}}
    scale, bias = model.apply(v, method=model.temperature)
    np.testing.assert_allclose(scale, 10.0, rtol=1e-6)
    np.testing.assert_allclose(bias, -10.0)
    init_v = jax.jit(lambda i, t: model.init(_key(), i, t))(images, tokens)
    np.testing.assert_allclose(init_v["params"]["logit_scale"], math.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(init_v["params"]["logit_bias"], -10.0)
    with pytest.raises(ValueError, match="tokens batch 3"):
        jax.eval_shape(lambda: model.init(_key(), images, jnp.ones((3, 5), jnp.int32)))
    with pytest.raises(ValueError, match="'align'"):
        two_tower("align", vit("tiny"), _TextTower())


def test_two_tower_forwards_train_mode():
    class Det(nn.Module):
        def __call__(self, x, deterministic: bool = True):
            return x

    assert _mode_kwargs(vit("tiny"), True) == {"train": True}
    assert _mode_kwargs(Det(), True) == {"deterministic": False}
    assert _mode_kwargs(_TextTower(), True) == {}
