"""jssl.augment.ops / recipes against NumPy references, identities and statistical bounds.

Compiles are the cost on CPU, so every jitted function here is built once per module.
"""
import colorsys
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.augment import ops, recipes

KEY = jax.random.PRNGKey(0)


def _images(c, b=8, h=16, w=16, seed=0):
    """Random images that also contain exact 0s and 1s."""
    x = np.random.default_rng(seed).uniform(size=(b, h, w, c)).astype(np.float32)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0
    return jnp.asarray(x)


# ------------------------------------------------------------------ deterministic ops
def _np_gray(x):
    return x if x.shape[-1] == 1 else (x @ np.array(ops.LUMA, np.float32))[..., None]


@pytest.mark.parametrize("c", [1, 3])
def test_adjust_functions_match_numpy(c):
    x = np.asarray(_images(c, b=1)[0])
    for f in (0.0, 0.6, 1.7):
        np.testing.assert_allclose(ops.adjust_brightness(x, f), np.clip(x * f, 0, 1), atol=1e-6)
        mean = _np_gray(x).mean()
        np.testing.assert_allclose(ops.adjust_contrast(x, f),
                                   np.clip(f * x + (1 - f) * mean, 0, 1), atol=1e-6)
        sat = x if c == 1 else np.clip(f * x + (1 - f) * _np_gray(x), 0, 1)
        np.testing.assert_allclose(ops.adjust_saturation(x, f), sat, atol=1e-6)
    if c == 1:  # documented no-ops for one channel
        np.testing.assert_array_equal(ops.adjust_hue(x, 0.3), x)


def test_hue_matches_colorsys_and_hsv_roundtrip():
    rgb = np.random.default_rng(1).uniform(size=(500, 3)).astype(np.float32)
    hsv, back = jax.jit(lambda x: (ops.rgb_to_hsv(x), ops.hsv_to_rgb(ops.rgb_to_hsv(x))))(rgb)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, ref, atol=2e-6)
    np.testing.assert_allclose(back, rgb, atol=2e-6)
    hue = jax.jit(ops.adjust_hue)
    for delta in (0.1, -0.37):
        ref = np.array([colorsys.hsv_to_rgb((h + delta) % 1.0, s, v) for h, s, v in
                        (colorsys.rgb_to_hsv(*p) for p in rgb)])
        np.testing.assert_allclose(hue(rgb[None], delta)[0], ref, atol=2e-5)


def test_gaussian_kernel_and_blur_match_numpy():
    for sigma, k in ((0.5, 3), (1.3, 7), (2.0, 23)):
        x = np.arange(k) - (k - 1) / 2
        ref = np.exp(-x ** 2 / (2 * sigma ** 2))
        kern = np.asarray(jax.jit(ops.gaussian_kernel1d, static_argnums=1)(sigma, k))
        np.testing.assert_allclose(kern.sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(kern, ref / ref.sum(), rtol=1e-5)
    img = np.asarray(_images(3, b=1, h=12, w=10)[0])
    kern = np.asarray(ops.gaussian_kernel1d(1.3, 5))
    pad = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    ref = sum(kern[i] * kern[j] * pad[i:i + 12, j:j + 10] for i in range(5) for j in range(5))
    blurred = jax.jit(ops.blur_image, static_argnums=2)(img, 1.3, 5)
    np.testing.assert_allclose(blurred, ref, atol=1e-6)
    assert ops.default_blur_kernel_size(224) == 23 and ops.default_blur_kernel_size(28) == 3


def test_grayscale_solarize_normalize():
    x = _images(3, b=1)[0]
    g = np.asarray(ops.random_grayscale(KEY, x, p=1.0))
    np.testing.assert_allclose(g, np.repeat(_np_gray(np.asarray(x)), 3, -1), atol=1e-6)
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    np.testing.assert_array_equal(ops.random_grayscale(KEY, x, p=0.0), x)
    np.testing.assert_array_equal(ops.solarize(KEY, x, p=1.0, threshold=0.3),
                                  np.where(x >= 0.3, 1 - x, x))
    np.testing.assert_allclose(ops.normalize(x, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)),
                               (np.asarray(x) - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0],
                               rtol=1e-6, atol=1e-6)


def test_color_jitter_applies_ops_in_the_drawn_order():
    x = _images(3, b=1)[0]
    u = jnp.asarray([0.9, 0.1, 0.8, 0.95, 0.0, 0.1, 0.3, 0.2, 0.0])  # apply; order 3,0,2,1
    fb, fc, fs, fh = 1 + 0.4 * (2 * 0.9 - 1), 1 + 0.4 * (2 * 0.1 - 1), 1 + 0.2 * 0.6, 0.09

    @jax.jit
    def run(u, x):
        out = ops.color_jitter_u(u, x, 0.4, 0.4, 0.2, 0.1, p=0.8)
        ref = ops.adjust_contrast(ops.adjust_saturation(
            ops.adjust_brightness(ops.adjust_hue(x, fh), fb), fs), fc)
        other = ops.adjust_hue(ops.adjust_saturation(ops.adjust_contrast(
            ops.adjust_brightness(x, fb), fc), fs), fh)
        return out, ref, other, ops.color_jitter_u(u.at[4].set(0.9), x)

    out, ref, other, skipped = run(u, x)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert float(jnp.abs(out - other).max()) > 1e-3  # the order matters, so this test can fail
    np.testing.assert_array_equal(skipped, x)  # u[4] = 0.9 >= p: not applied


def test_resized_crop_is_exact_at_unit_scale_and_keeps_constants():
    x = _images(3, b=1, h=20, w=24)[0]
    crop = jax.jit(ops.resized_crop, static_argnums=2)
    out = crop(x, jnp.array([3, 5, 10, 12]), (10, 12))
    np.testing.assert_allclose(out, x[3:13, 5:17], atol=1e-6)
    const = jnp.full((20, 24, 1), 0.37)
    np.testing.assert_allclose(crop(const, jnp.array([1, 2, 17, 9]), 7), 0.37, atol=1e-6)


# ----------------------------------------------------------------- random ops, batched
@functools.cache
def _all_ops():
    """Every random op on a batch, from one uniform draw (``op(key) = op_u(uniform(key))``;
    one threefry call instead of six keeps the compile short)."""
    def run(key, images):
        u = jax.random.uniform(key, (6, images.shape[0], ops.N_CROP))
        return {
            "rrc": jax.vmap(lambda q, x: ops.random_resized_crop_u(q, x, 12))(u[0], images),
            "flip": jax.vmap(ops.horizontal_flip_u)(u[1], images),
            "jitter": jax.vmap(ops.color_jitter_u)(u[2], images),
            "gray": jax.vmap(ops.random_grayscale_u)(u[3], images),
            "blur": jax.vmap(lambda q, x: ops.gaussian_blur_u(q, x, p=1.0))(u[4], images),
            "solarize": jax.vmap(ops.solarize_u)(u[5], images),
        }
    return jax.jit(run)


@pytest.mark.parametrize("c", [1, 3])
def test_every_op_keeps_values_in_unit_interval(c):
    images = _images(c)
    outs = _all_ops()(KEY, images)
    for name, out in outs.items():
        assert out.shape[-1] == c and out.shape[0] == 8, name
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
    again = _all_ops()(KEY, images)
    for name in outs:
        np.testing.assert_array_equal(outs[name], again[name])
    assert not np.array_equal(outs["jitter"][0], outs["jitter"][1])  # per-example keys


def test_flip_rate_is_binomial():
    n = 2000
    images = jnp.tile(jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1), (n, 1, 1, 1))
    out = jax.jit(lambda k, x: ops.apply_batch(ops.horizontal_flip, k, x))(KEY, images)
    rate = float(jnp.mean(out[:, 0, 0, 0] == 1.0))
    assert abs(rate - 0.5) < 4 * np.sqrt(0.25 / n), rate  # 4 sigma


def _np_torchvision_boxes(rng, n, h, w, scale, ratio):
    """NumPy reference of torchvision's RandomResizedCrop.get_params (10 attempts)."""
    a = rng.uniform(*scale, (n, 10)) * h * w
    r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, 10)))
    bw, bh = np.round(np.sqrt(a * r)), np.round(np.sqrt(a / r))
    ok = (bw <= w) & (bh <= h) & (bw > 0) & (bh > 0)
    first = ok.argmax(1)
    rows = np.arange(n)
    return np.where(ok.any(1), bw[rows, first] * bh[rows, first], h * w) / (h * w)


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.2, 0.5), (0.5, 2.0))])
def test_crop_boxes_within_ranges_and_mean_area(scale, ratio):
    n, h, w = 2000, 224, 224
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    boxes = np.asarray(jax.jit(jax.vmap(
        lambda k: ops.random_crop_box(k, h, w, scale, ratio)))(keys))
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all()
    assert (left + bw <= w).all()
    area = bh * bw / (h * w)
    # rounding w and h to pixels moves the area/aspect by at most ~1/side
    slack = 1.0 / np.minimum(bh, bw)
    assert (area >= scale[0] * (1 - 2 * slack)).all()
    assert (area <= np.minimum(1.0, scale[1] * (1 + 2 * slack))).all()
    aspect = bw / bh
    assert (aspect >= ratio[0] * (1 - 2 * slack)).all()
    assert (aspect <= ratio[1] * (1 + 2 * slack)).all()
    ref = _np_torchvision_boxes(np.random.default_rng(0), 200_000, h, w, scale, ratio)
    se = ref.std() / np.sqrt(n)
    assert abs(area.mean() - ref.mean()) < 4 * se + 2e-3, (area.mean(), ref.mean())
    # the naive uniform-scale mean (a + b) / 2, loose: rejection of big, elongated boxes
    # lowers it (0.54 -> 0.48 for the default ranges)
    assert abs(area.mean() - np.mean(scale)) < 0.1
    assert len(set(map(tuple, boxes))) > 0.95 * n  # keys differ -> boxes differ


def test_bad_inputs_raise_value_errors():
    x = jnp.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="scale"):
        ops.random_crop_box(KEY, 8, 8, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        ops.horizontal_flip(KEY, jnp.zeros((8, 8, 4)))
    with pytest.raises(ValueError, match="float"):
        ops.solarize(KEY, jnp.zeros((8, 8, 3), jnp.uint8))
    with pytest.raises(ValueError, match="hue"):
        ops.color_jitter(KEY, x, hue=0.7)
    with pytest.raises(ValueError, match="kernel_size"):
        ops.blur_image(x, 1.0, 4)
    with pytest.raises(ValueError, match="p must"):
        ops.random_grayscale(KEY, x, p=1.2)
    with pytest.raises(ValueError, match="std"):
        ops.normalize(x, 0.5, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="images"):
        recipes.simclr_views(KEY, x, 8)


# ----------------------------------------------------------------------------- recipes
@functools.cache
def _recipe(name):
    fns = {
        "simclr": lambda k, x: recipes.simclr_views(k, x, 12),
        "byol": lambda k, x: recipes.byol_views(k, x, 12),
        "mocov2": lambda k, x: recipes.mocov2_views(k, x, 12),
        "dino": lambda k, x: recipes.dino_multicrop(k, x, 12, 6, num_local=3),
    }
    return jax.jit(fns[name])


def _leaves_ok(out, shapes):
    leaves = jax.tree.leaves(out)
    assert [tuple(a.shape) for a in leaves] == shapes
    for a in leaves:
        assert a.dtype == jnp.float32 and float(a.min()) >= 0 and float(a.max()) <= 1


@pytest.mark.parametrize("name,c", [("simclr", 3), ("byol", 3), ("mocov2", 1), ("dino", 1)])
def test_recipes_jit_over_a_batch(name, c):
    images = _images(c)
    out = _recipe(name)(KEY, images)
    two = [(8, 12, 12, c)] * 2
    _leaves_ok(out, two + [(8, 6, 6, c)] * 3 if name == "dino" else two)
    np.testing.assert_array_equal(jax.tree.leaves(_recipe(name)(KEY, images))[0],
                                  jax.tree.leaves(out)[0])
    other = _recipe(name)(jax.random.PRNGKey(7), images)
    assert not np.array_equal(jax.tree.leaves(other)[0], jax.tree.leaves(out)[0])
    v1, v2 = jax.tree.leaves(out)[:2]
    assert not np.array_equal(v1, v2)  # the two views are different draws
    # shapes for the other channel count, traced but not compiled (keeps the suite fast)
    shapes = jax.eval_shape(_recipe(name), KEY, _images(4 - c))
    assert all(s.shape[-1] == 4 - c and s.shape[0] == 8 for s in jax.tree.leaves(shapes))


def test_grouped_views_equal_the_plain_pipeline():
    """make_views vmaps BYOL's two views with their probabilities as arrays; view 2 must be
    exactly the pipeline run with its own static probabilities on the same uniforms."""
    images = _images(3)
    _, v2 = _recipe("byol")(KEY, images)
    vp2 = recipes.BYOLParams().views()[1]
    u = jax.random.uniform(KEY, (2, 8, recipes.NUM_UNIFORMS))[1]
    ref = jax.jit(jax.vmap(lambda q, x: recipes.view_u(q, x, 12, vp2)))(u, images)
    np.testing.assert_allclose(v2, ref, atol=1e-6)


def test_recipe_params_are_overridable_and_checked():
    p = recipes.SimCLRParams(strength=0.5, blur=False)
    vp = p.views()[0]
    assert (vp.brightness, vp.hue, vp.blur_p) == (0.4, 0.1, 0.0)
    assert recipes.BYOLParams().views()[0].blur_p == 1.0
    assert recipes.BYOLParams().views()[1].solarize_p == 0.2
    g1, g2 = recipes.DINOParams().global_views()
    assert (g1.blur_p, g2.blur_p, g2.solarize_p, g1.scale) == (1.0, 0.1, 0.2, (0.4, 1.0))
    assert recipes.DINOParams().local_view().scale == (0.05, 0.4)
    with pytest.raises(ValueError, match="scale"):
        recipes.ViewParams(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="blur_p"):
        recipes.ViewParams(blur_p=2.0)
