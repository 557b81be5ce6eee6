"""I-JEPA: multi-block masks, padded context slots, the predictor, the EMA target with no
gradient, the loss against NumPy, and one step on 1 vs 8 devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_engine import ROOT, _build, _one_step, _prepared, assert_same_step, load_experiment

from jssl.masking.multiblock import max_block, multiblock_masks
from jssl.methods.ijepa import linear_tau, smooth_l1
from jssl.models.ijepa import Predictor
from jssl.models.vit import vit

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("ijepa")

GRID = (7, 7)


def _rectangle(ids: np.ndarray) -> tuple[int, int]:
    rows, cols = ids // GRID[1], ids % GRID[1]
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert len(set(ids.tolist())) == len(ids) == h * w  # a full h × w rectangle
    return h, w


def test_multiblock_masks_are_rectangles_and_context_avoids_targets():
    sizes = []
    for seed in range(20):
        m = jax.device_get(multiblock_masks(jax.random.key(seed), GRID, 8))
        assert m["target_ids"].shape[:2] == (8, 4)
        assert m["target_ids"].shape[2] == np.prod(max_block(GRID, (0.15, 0.2), (0.75, 1.5)))
        step_sizes = set()
        for b in range(8):
            covered = set()
            for t in range(4):
                ids = m["target_ids"][b, t][m["target_valid"][b, t]]
                step_sizes.add(_rectangle(ids))
                covered |= set(ids.tolist())
            ctx_all = m["context_ids"][b]
            h, w = _rectangle(np.unique(ctx_all))  # the slot grid covers one block
            assert h == w and h <= GRID[0] - 1
            ctx = set(m["context_ids"][b][m["context_valid"][b]].tolist())
            assert not ctx & covered
            assert ctx == set(np.unique(ctx_all).tolist()) - covered
        assert len(step_sizes) == 1  # one block size per step, as I-JEPA's collator
        sizes.append(step_sizes.pop())
    areas = [h * w for h, w in sizes]
    # scale 0.15–0.2 of 49 patches: 7–9 cells before rounding h and w
    assert min(areas) >= 4 and max(areas) <= 12 and len(set(sizes)) > 1


def test_multiblock_bad_arguments_fail_with_one_line():
    with pytest.raises(ValueError, match=r"target_scale=\(0.3, 0.2\)"):
        multiblock_masks(jax.random.key(0), GRID, 2, target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="num_targets"):
        multiblock_masks(jax.random.key(0), GRID, 2, num_targets=0)


def test_padded_context_slots_do_not_change_the_valid_tokens():
    """Encoding K slots of which some are padding (keep_valid False) gives, on the valid
    slots, exactly the encoding of the valid patches alone."""
    model = vit("tiny", patch_size=4, use_cls=False, pool="none")
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    params = model.init(jax.random.key(2), x)
    ids = jnp.array([[3, 10, 11, 20, 30, 31], [0, 1, 2, 40, 41, 48]])
    valid = jnp.array([[True, True, False, True, False, True],
                       [True, False, True, True, True, False]])
    padded = model.apply(params, x, keep_ids=ids, keep_valid=valid)
    for b in range(2):
        alone = model.apply(params, x[b:b + 1], keep_ids=ids[b:b + 1][:, valid[b]])
        np.testing.assert_allclose(np.asarray(padded[b][valid[b]]), np.asarray(alone[0]),
                                   rtol=1e-5, atol=1e-5)


def test_predictor_ignores_invalid_target_slots():
    pred = Predictor(GRID, dim=16, depth=2, num_heads=2, out_dim=8)
    m = multiblock_masks(jax.random.key(3), GRID, 2)
    ctx = jax.random.normal(jax.random.key(4), (2, m["context_ids"].shape[1], 8))
    params = pred.init(jax.random.key(5), ctx, m["context_ids"], m["context_valid"],
                       m["target_ids"], m["target_valid"])
    out = pred.apply(params, ctx, m["context_ids"], m["context_valid"], m["target_ids"],
                     m["target_valid"])
    assert out.shape == (*m["target_ids"].shape, 8)
    # Moving the invalid slots elsewhere and scrambling invalid context rows changes nothing.
    t_ids = jnp.where(m["target_valid"], m["target_ids"], 0)
    ctx2 = jnp.where(m["context_valid"][..., None], ctx, 100.0)
    out2 = pred.apply(params, ctx2, m["context_ids"], m["context_valid"], t_ids,
                      m["target_valid"])
    v = np.asarray(m["target_valid"])
    np.testing.assert_allclose(np.asarray(out2)[v], np.asarray(out)[v], rtol=1e-5, atol=1e-5)


def test_smooth_l1_and_momentum_schedule():
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 2.5])
    ref = np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)
    np.testing.assert_allclose(np.asarray(smooth_l1(jnp.asarray(x))), ref, rtol=1e-6)
    np.testing.assert_allclose([float(linear_tau(s, 100, 0.996)) for s in (0, 50, 100, 150)],
                               [0.996, 0.998, 1.0, 1.0], rtol=1e-6)


@pytest.fixture(scope="module")
def setup():
    config = load_experiment(ROOT / "experiments" / "ijepa.py").get_config("tiny")
    config.optim.warmup_steps = 0
    config.optim.base_lr = 0.02  # a first Adam step of ~1e-3 per param
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
             "label": np.arange(16, dtype=np.int32) % 10}
    return config, batch


def test_loss_matches_numpy_and_the_target_gets_no_gradient(setup):
    config, batch = setup
    state, step, method = _build(config, jax.devices()[:1], batch)
    inputs = step.prepare(state.rng, state.step, batch)
    loss, _ = method.loss(state.params, {}, state.extra, inputs, jax.random.key(0),
                          jnp.int32(0))
    # NumPy reference from the networks' outputs: LayerNorm'd target tokens, gathered.
    s_y = np.asarray(method.encoder.apply({"params": state.extra["target"]}, inputs["images"]),
                     np.float64)
    s_y = (s_y - s_y.mean(-1, keepdims=True)) / np.sqrt(s_y.var(-1, keepdims=True) + 1e-6)
    s_x = method.encoder.apply({"params": state.params["encoder"]}, inputs["images"],
                               keep_ids=inputs["context_ids"], keep_valid=inputs["context_valid"])
    pred = np.asarray(method.predictor.apply(
        {"params": state.params["predictor"]}, s_x, inputs["context_ids"],
        inputs["context_valid"], inputs["target_ids"], inputs["target_valid"]), np.float64)
    tgt = np.stack([s_y[b][np.asarray(inputs["target_ids"][b])] for b in range(16)])
    d = np.abs(pred - tgt)
    elem = np.where(d < 1, 0.5 * d * d, d - 0.5)
    w = np.asarray(inputs["target_valid"], np.float64)[..., None]
    ref = (elem * w).sum() / (w.sum() * pred.shape[-1])
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4)

    g_extra = jax.grad(lambda e: method.loss(state.params, {}, e, inputs, jax.random.key(0),
                                             jnp.int32(0))[0])(state.extra)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_extra))


def test_ema_target_moves_toward_the_online_encoder(setup):
    config, batch = setup
    state, _, method = _build(config, jax.devices()[:1], batch)
    online = jax.tree.map(lambda p: p + 1.0, state.params)
    new = method.update_extra(online, state.extra, jnp.int32(0))
    tau = 0.996
    for t, o, n in zip(jax.tree.leaves(state.extra["target"]),
                       jax.tree.leaves(online["encoder"]), jax.tree.leaves(new["target"]),
                       strict=True):
        np.testing.assert_allclose(np.asarray(n), tau * np.asarray(t) + (1 - tau) *
                                   np.asarray(o), rtol=1e-5, atol=1e-6)


def test_one_ijepa_step_is_the_same_on_1_and_8_devices(setup):
    config, batch = setup
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, _ = _one_step(config, jax.devices(), batch, inputs=inputs1)
    own8 = _prepared(config, jax.devices(), batch)
    for k in ("target_ids", "target_valid", "context_ids", "context_valid"):
        np.testing.assert_array_equal(own8[k], inputs1[k])
    assert_same_step(config, batch, (p1, l1), (p8, l8), zero_grad=("['key']['bias']",))
