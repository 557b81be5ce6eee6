"""ResNet backbones: shapes, dtypes, presets, gradients, GroupNorm, synchronised BatchNorm."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sharded_check import make_mesh

from jssl.models.resnet import resnet


# XLA:CPU compiles threefry slowly (~0.15 s per random draw); the RBG generator keeps model
# init cheap in tests. Inits are jitted and shared through module-scoped fixtures.
def _key(seed=0):
    return jax.random.key(seed, impl="unsafe_rbg")


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, x):
    return jax.jit(lambda x: model.init(_key(1), x, train=False))(x)


@pytest.fixture(scope="module")
def tiny():
    """Tiny CIFAR-stem ResNet variables (BatchNorm and GroupNorm share the param tree)."""
    x = _images((16, 8, 8, 3), seed=3)
    return _init(resnet("tiny", stem="cifar"), x), x


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(tiny, dtype):
    variables, x = tiny
    model = resnet("tiny", stem="cifar", dtype=dtype, return_feature_map=True)
    pooled, fm = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x[:2])
    assert pooled.shape == (2, 64) and pooled.dtype == dtype
    assert fm.shape == (2, 1, 1, 64) and fm.dtype == dtype  # 8 px -> 3 stride-2 stages -> 1
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(pooled, np.float32),
                               np.asarray(fm, np.float32).mean(axis=(1, 2)), rtol=1e-2,
                               atol=1e-2)


def test_imagenet_stem_single_channel():
    model = resnet("tiny", stem="imagenet", return_feature_map=True)
    x = _images((2, 32, 32, 1))
    variables = _init(model, x)
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 1, 8)
    pooled, fm = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    # 32 -> stem conv /2 -> maxpool /2 -> 3 strided stages /8 -> 1
    assert pooled.shape == (2, 64) and fm.shape == (2, 1, 1, 64)
    np.testing.assert_allclose(pooled, fm.mean(axis=(1, 2)), rtol=1e-6)
    assert np.all(np.isfinite(pooled)) and np.std(pooled) > 0


def test_preset_parameter_counts():
    """torchvision counts minus the fc layer: R18 11,689,512 - 513,000; R50 25,557,032 -
    2,049,000."""
    x = jnp.zeros((1, 224, 224, 3))
    for name, expected, feat in [("resnet18", 11_176_512, 512), ("resnet50", 23_508_032, 2048)]:
        model = resnet(name)
        shapes = jax.eval_shape(lambda m=model: m.init(_key(), x, train=False))
        assert sum(a.size for a in jax.tree.leaves(shapes["params"])) == expected
        out = jax.eval_shape(lambda v, m=model: m.apply(v, x, train=False), shapes)
        assert out.shape == (1, feat) and model.num_features == feat
    wide = resnet("resnet50", width=2)
    assert wide.num_features == 4096


def test_jit_forward_backward_updates_batch_stats(tiny):
    model = resnet("tiny", stem="cifar")
    variables, x = tiny
    x = x[:4]

    @jax.jit
    def step(params, batch_stats):
        def loss(p):
            feats, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                     mutable=["batch_stats"])
            return jnp.mean(feats ** 2), upd
        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, upd), grads = step(variables["params"], variables["batch_stats"])
    assert np.isfinite(value) and value > 0
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(np.asarray(g) != 0), f"zero gradient at {path}"
    # running mean moved from 0 towards the batch mean: new = 0.9 * 0 + 0.1 * batch_mean
    rm = upd["batch_stats"]["stem_norm"]["mean"]
    stem_out = jax.lax.conv_general_dilated(
        x, variables["params"]["stem_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(rm, 0.1 * np.asarray(stem_out).mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)


def test_group_norm_has_no_batch_stats_and_is_per_sample(tiny):
    model = resnet("tiny", stem="cifar", norm="group", num_groups=4)
    bn_vars, x = tiny
    x = x[:3]
    shapes = jax.eval_shape(lambda: model.init(_key(), x, train=True))
    assert set(shapes) == {"params"}
    variables = {"params": bn_vars["params"]}  # same tree: {scale, bias} per norm layer
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    full = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, x)
    single = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, x[:1])
    np.testing.assert_allclose(single, full[:1], rtol=1e-5, atol=1e-6)


def test_sync_batchnorm_shard_map_equals_global_batch(tiny):
    """Inside shard_map over 8 devices (2 samples each) with axis_name='data', outputs and
    updated batch_stats equal BatchNorm on the global batch of 16."""
    variables, x = tiny
    global_model = resnet("tiny", stem="cifar")
    sync_model = resnet("tiny", stem="cifar", axis_name="data")
    params, stats = variables["params"], variables["batch_stats"]

    ref_out, ref_upd = jax.jit(lambda p, s, x: global_model.apply(
        {"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"]))(params,
                                                                                 stats, x)
    mesh = make_mesh((8,), ("data",))

    def local(p, s, xs):
        return sync_model.apply({"params": p, "batch_stats": s}, xs, train=True,
                                mutable=["batch_stats"])

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data")),
                              out_specs=(P("data"), P())))
    rep = NamedSharding(mesh, P())
    out, upd = f(jax.device_put(params, rep), jax.device_put(stats, rep),
                 jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=1e-5, atol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_upd),
                            jax.tree.leaves(upd), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6,
                                   err_msg=str(path))
    # without axis_name each device normalises its own 2 samples: visibly different
    local_only = jax.jit(lambda p, s, xs: global_model.apply(
        {"params": p, "batch_stats": s}, xs, train=True, mutable=["batch_stats"])[0])
    assert not np.allclose(np.asarray(local_only(params, stats, x[:2])),
                           np.asarray(ref_out[:2]), rtol=1e-3)


@pytest.mark.parametrize("kw,match", [
    (dict(stem="resnet"), "stem='resnet'"), (dict(norm="layer"), "norm='layer'"),
    (dict(block="dense"), "block='dense'"), (dict(width=0), "width=0"),
    (dict(norm="group", num_groups=3), "num_groups=3"),
    (dict(act="swish"), r"act='swish': use one of \['gelu', 'relu', 'silu'\]"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: resnet("tiny", **kw).init(_key(),
                                                         jnp.zeros((1, 8, 8, 3)), train=False))


@pytest.mark.parametrize("act, primitive", [("relu", "max"), ("silu", "logistic"),
                                           ("gelu", "tanh")])
def test_activation_is_applied_after_every_norm_and_residual_sum(act, primitive):
    """``act`` swaps the nonlinearity only: same params; 9 activations in the tiny ResNet
    (stem + 2 per basic block x 4 blocks), each the chosen function (SiLU: x·σ(x), GELU's
    tanh approximation as nn.gelu)."""
    x = _images((2, 8, 8, 1))
    relu_model, model = resnet("tiny", stem="cifar"), resnet("tiny", stem="cifar", act=act)
    variables = jax.eval_shape(lambda: model.init(_key(), x, train=False))
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(lambda: relu_model.init(_key(), x, train=False)))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)

    def count(eqns, name):
        n = 0
        for e in eqns:
            n += e.primitive.name == name
            for sub in jax_core.jaxprs_in_params(e.params):
                n += count(sub.eqns, name)
        return n

    assert count(jaxpr.jaxpr.eqns, primitive) == 9
    others = {"relu": "max", "silu": "logistic", "gelu": "tanh"}
    for other, prim in others.items():
        if other != act:
            assert count(jaxpr.jaxpr.eqns, prim) == 0, (act, prim)


def test_bad_preset_and_input_raise():
    with pytest.raises(ValueError, match="resnet9"):
        resnet("resnet9")
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: resnet("tiny").init(_key(), jnp.zeros((8, 8, 3)),
                                                   train=False))


def test_space_to_depth_stem_is_a_lossless_rearrangement_at_half_resolution():
    from jssl.models.resnet import space_to_depth

    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    y = np.asarray(space_to_depth(jnp.asarray(x), 2))
    assert y.shape == (2, 2, 3, 12)
    for i in range(2):
        for j in range(3):  # pixel (i, j) holds the 2x2 block row-major, channels innermost
            block = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :].reshape(2, 12)
            np.testing.assert_array_equal(y[:, i, j], block)
    model = resnet("tiny", stem="s2d", return_feature_map=True)
    images = jnp.ones((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), images, train=False)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 4, 8)
    _, fmap = model.apply(variables, images, train=False)
    assert fmap.shape == (2, 2, 2, 64)  # 14 -> 14 -> 7 -> 4 -> 2 instead of 28 -> ... -> 4
    with pytest.raises(ValueError, match=r"stem='s2d' needs even image sides, got \(27, 27\)"):
        model.init(jax.random.key(0), jnp.ones((2, 27, 27, 1)), train=False)
