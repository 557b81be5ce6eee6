"""MAE, RotNet, Jigsaw, context prediction and colorization: masks and labels made in
``prepare`` match the transformation, losses equal NumPy references on the model's own
outputs, and one step is the same on 1 and 8 devices (MAE, RotNet)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_check import SMOOTH_RESNET, assert_same_update
from test_engine import ROOT, _build, _one_step, load_experiment, tiny_config  # tests/ on path

from jssl.augment.pretext import CONTEXT_OFFSETS, ab_bin_centers
from jssl.methods import get_method
from jssl.train.mesh import make_mesh

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("methods_mae_pretext")

N = 16  # the tiny presets' global batch
KEY = jax.random.key(7)


def _batch(channels=1, seed=0, n=N):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, 28, 28, channels), dtype=np.uint8),
            "label": np.arange(n, dtype=np.int32) % 10}


# The space-to-depth stem runs the tiny ResNet at half resolution: 4x fewer FLOPs on CPU.
FAST = {"model.encoder.stem": "s2d"}


def _method(name, **overrides):
    config = load_experiment(ROOT / "experiments" / f"{name}.py").get_config("tiny")
    if name != "mae":
        overrides = {**FAST, **overrides}
    for key, value in overrides.items():
        section, field = key.rsplit(".", 1)
        config[section][field] = value
    return get_method(name)(config, make_mesh(config, devices=jax.devices()[:1]))


def _noise_images(seed=0, channels=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(N, 28, 28, channels)),
                       jnp.float32)


def _np_cross_entropy(logits, labels):
    z = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    y = np.asarray(labels).reshape(-1)
    lse = np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1)) + z.max(1)
    return float(np.mean(lse - z[np.arange(len(y)), y]))


# -------------------------------------------------------------------------------- MAE
@pytest.fixture(scope="module")
def mae_setup():
    method = _method("mae")
    batch = jax.tree.map(jnp.asarray, _batch())
    variables, extra = jax.jit(method.init)(KEY, batch)
    prepared = jax.jit(method.prepare)(batch, KEY)
    return method, variables, extra, prepared


def test_mae_masks_exactly_three_quarters_of_the_patches_per_example(mae_setup):
    method, _, _, prepared = mae_setup
    num_patches = (28 // 4) ** 2  # 49
    ids_keep, ids_restore = np.asarray(prepared["ids_keep"]), np.asarray(prepared["ids_restore"])
    n_masked = round(0.75 * num_patches)  # 37
    assert ids_keep.shape == (N, num_patches - n_masked)
    assert ids_restore.shape == (N, num_patches)
    for keep, restore in zip(ids_keep, ids_restore, strict=True):
        assert sorted(restore.tolist()) == list(range(num_patches))  # a permutation
        assert len(set(keep.tolist())) == len(keep)
        masked = restore >= len(keep)  # MAE's mask from ids_restore
        assert masked.sum() == n_masked and not masked[keep].any()
    assert len({tuple(sorted(k)) for k in ids_keep.tolist()}) > 1  # per-example masks


def test_mae_encoder_sees_visible_patches_and_loss_matches_numpy(mae_setup):
    method, variables, extra, prepared = mae_setup
    x = prepared["views"]
    out = method.model(1).apply(variables, x, ids_keep=prepared["ids_keep"],
                                ids_restore=prepared["ids_restore"], train=True)
    n_keep = prepared["ids_keep"].shape[1]
    assert out.latent.shape == (N, n_keep + 1, method.encoder.dim)  # visible + cls
    loss, (metrics, _) = jax.jit(method.loss)(variables["params"], {}, extra, prepared, KEY,
                                              jnp.int32(0))

    # NumPy reference: patchify (raster patches, (row, col, channel) pixels), per-patch
    # standardised target, squared error averaged over the masked patches only.
    img = np.asarray(x, np.float64)
    patches = img.reshape(N, 7, 4, 7, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(N, 49, 16)
    target = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
        patches.var(-1, keepdims=True) + 1e-6)
    mask = np.asarray(prepared["ids_restore"]) >= n_keep
    err = np.mean((np.asarray(out.pred, np.float64) - target) ** 2, axis=-1)
    np.testing.assert_allclose(float(loss), err[mask].mean(), rtol=1e-5)
    assert abs(err[mask].mean() - err.mean()) > 1e-4  # visible patches would change it
    np.testing.assert_allclose(float(metrics["mask_fraction"]), 37 / 49, rtol=1e-6)


def test_mae_features_pool_all_patch_tokens(mae_setup):
    method, variables, extra, _ = mae_setup
    images = _noise_images()[:4]
    feats = method.features(variables, extra, images)
    assert feats.shape == (4, method.encoder.dim)
    ids = jnp.broadcast_to(jnp.arange(49), (4, 49))
    tokens = method.model(1).apply(variables, images, ids, method="encode")
    assert tokens.shape == (4, 50, method.encoder.dim)
    np.testing.assert_allclose(feats, np.asarray(tokens)[:, 1:].mean(1), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- pretext labels
def test_rotnet_unrotating_by_the_label_recovers_every_image():
    method = _method("rotnet")
    images = _noise_images()
    inputs, labels = jax.jit(method.pretext)(KEY, images)
    assert inputs.shape == (4 * N, 1, 28, 28, 1) and labels.tolist() == [0, 1, 2, 3] * N
    for m in range(4 * N):
        back = np.rot90(np.asarray(inputs[m, 0]), -int(labels[m]), axes=(0, 1))
        np.testing.assert_array_equal(back, images[m // 4])
    assert not np.array_equal(inputs[1, 0], inputs[0, 0])


def test_jigsaw_tiles_reordered_by_the_label_permutation_recover_the_grid():
    method = _method("jigsaw")  # 3x3 cells of 9 px, 8 px tiles (jitter 1), normalised
    images = np.asarray(_noise_images())
    tiles, labels = jax.jit(method.pretext)(KEY, jnp.asarray(images))
    tiles, labels = np.asarray(tiles), np.asarray(labels)
    assert tiles.shape == (N, 9, 8, 8, 1) and method.num_classes == 8
    assert len(set(labels.tolist())) > 1

    def norm(t):
        return (t - t.mean()) / (t.std() + 1e-5)

    for b in range(N):
        ordered = tiles[b][np.argsort(method.perms[labels[b]])]  # back to row-major cells
        for cell in range(9):
            r, q = divmod(cell, 3)
            crops = [norm(images[b, 9 * r + dr:9 * r + dr + 8, 9 * q + dq:9 * q + dq + 8])
                     for dr in (0, 1) for dq in (0, 1)]
            err = min(np.max(np.abs(ordered[cell] - c)) for c in crops)
            assert err < 1e-3, (b, cell, err)


def test_context_label_is_the_neighbours_true_offset():
    method = _method("context")  # 8 px patches, gap 1, jitter 1 in 28 px views
    images = np.asarray(_noise_images())
    pairs, labels = jax.jit(method.pretext)(KEY, jnp.asarray(images))
    pairs, labels = np.asarray(pairs), np.asarray(labels)
    assert pairs.shape == (N, 2, 8, 8, 1) and len(set(labels.tolist())) > 2

    def locate(image, patch):
        for i in range(21):
            for j in range(21):
                if np.array_equal(image[i:i + 8, j:j + 8], patch):
                    return np.array([i, j])
        raise AssertionError("patch not found in its image")

    step = 8 + 1  # patch + gap
    for b in range(N):
        delta = locate(images[b], pairs[b, 1]) - locate(images[b], pairs[b, 0])
        want = np.array(CONTEXT_OFFSETS[labels[b]]) * step
        assert np.all(np.abs(delta - want) <= 2), (b, delta, want)  # up to 2 × jitter apart


def test_colorization_targets_of_a_pure_red_image():
    method = _method("colorization")
    red = jnp.zeros((2, 28, 28, 3)).at[..., 0].set(1.0)  # sRGB red: Lab (53.24, 80.09, 67.20)
    lightness, labels = jax.jit(method.pretext)(red)
    assert lightness.shape == (2, 28, 28, 1) and labels.shape == (2, 7, 7)
    np.testing.assert_allclose(lightness, 0.5324, atol=2e-4)
    centres = ab_bin_centers()
    np.testing.assert_array_equal(centres[np.asarray(labels)], np.broadcast_to([80, 70],
                                                                              (2, 7, 7, 2)))


# ---------------------------------------------------------------- cross-entropy losses
@pytest.mark.parametrize("name, channels", [("rotnet", 1), ("jigsaw", 1), ("context", 1),
                                            ("colorization", 3)])
def test_pretext_loss_is_the_cross_entropy_of_the_models_logits(name, channels):
    method = _method(name)
    batch = jax.tree.map(jnp.asarray, _batch(channels))
    variables, extra = jax.jit(method.init)(KEY, batch)
    prepared = jax.jit(method.prepare)(batch, KEY)
    params = variables.pop("params")
    x = prepared["lightness"] if name == "colorization" else prepared["inputs"]

    @jax.jit
    def logits_and_loss(params, variables):
        logits, _ = method.net.apply({**variables, "params": params}, x, train=True,
                                     mutable=["batch_stats"])
        return logits, method.loss(params, variables, extra, prepared, KEY, jnp.int32(0))

    logits, (loss, (metrics, new_vars)) = logits_and_loss(params, variables)
    np.testing.assert_allclose(float(loss), _np_cross_entropy(logits, prepared["label"]),
                               rtol=1e-5)
    assert float(loss) > 0.1  # an untrained head: far from a perfect fit
    assert set(new_vars) == {"batch_stats"}
    feats = method.features({"params": params, **variables}, extra, _noise_images(
        channels=channels)[:4])
    assert feats.shape == (4, 64)  # the tiny ResNet's pooled width


# ------------------------------------------------------------------- 1 vs 8 devices
@pytest.mark.parametrize("name", ["mae", "rotnet"])
def test_one_step_is_the_same_on_1_and_8_devices(tmp_path, name):
    # Batch 8 (one example per device; 32 rotated images for RotNet) keeps it fast on CPU.
    fast = {} if name == "mae" else {**FAST, **SMOOTH_RESNET}  # SiLU: no kinks (step_check)
    config = tiny_config(tmp_path, name, **{"optim.warmup_steps": 0, "train.batch_size": 8,
                                            **fast})
    batch = _batch(n=8)
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, _ = _one_step(config, jax.devices(), batch, inputs=inputs1)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    p0 = jax.device_get(_build(config, jax.devices()[:1], batch)[0].params)
    peak_lr = config.optim.base_lr * 8 / 256
    for (path, a), b, a0 in zip(jax.tree_util.tree_flatten_with_path(p1)[0],
                                jax.tree.leaves(p8), jax.tree.leaves(p0), strict=True):
        if "['key']['bias']" in jax.tree_util.keystr(path):
            # Attention logits q·(k + b) shift by the same q·b for every key, so softmax makes
            # the key bias's gradient exactly 0; Adam's first step g / (|g| + eps) turns its
            # rounding noise into updates of either sign, bounded by the lr.
            assert np.max(np.abs(a - a0)) <= peak_lr * 1.001 and np.max(np.abs(b - a0)) <= (
                peak_lr * 1.001)
    # Every other leaf: the same update to 1e-5 of its own step (step_check).
    moved = assert_same_update(p0, p1, p8, skip=("['key']['bias']",))
    assert max(moved) > min(1e-4, 0.5 * peak_lr), moved  # Adam's first step moves ~lr


# ------------------------------------------------------------------------ bad configs
@pytest.mark.parametrize("name, overrides, match", [
    ("colorization", {"method_params.allow_grayscale": False},
     r"colorization needs RGB images but config.data.name='fashion_mnist_local'"),
    ("context", {"method_params.gap": 3},
     r"patch_size=8, gap=3, jitter=1 need a 32x32 view but config.augment.size=28"),
    ("jigsaw", {"method_params.num_perms": 1}, r"config.method_params.num_perms=1 must be"),
    ("mae", {"method_params.mask_ratio": 1.0}, r"config.method_params.mask_ratio=1.0 must be"),
    ("mae", {"model.encoder": {"name": "resnet", "preset": "tiny"}},
     r"config.model.encoder.name='resnet': MAE needs a ViT encoder"),
])
def test_bad_config_names_the_field(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        method = _method(name, **overrides)
        method.init(KEY, _batch())
