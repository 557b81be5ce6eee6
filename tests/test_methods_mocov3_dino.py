"""MoCo v3 and DINO: the 2T-scaled symmetric contrastive loss over the global batch, the
momentum encoder / teacher EMA and stop-gradient, DINO's centre over the global batch, teacher
temperature warm-up, frozen last layer, per-param gradient clipping, ViT position
interpolation for multi-crop, and one step on 1 vs 8 devices on identical inputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from step_check import SMOOTH_RESNET, assert_same_update
from test_engine import ROOT, _build, load_experiment, tiny_config  # tests/ is on sys.path
from test_methods_byol_moco import _assert_trees_close, _batch, _host, _np_tau

from jssl.methods import get_method
from jssl.methods.byol import target_part
from jssl.methods.dino import teacher_temperature
from jssl.models.vit import interpolate_pos_embed, vit
from jssl.train.mesh import make_mesh
from jssl.train.optim import make_optimizer
from jssl.train.state import batch_spec

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("methods_mocov3_dino")

N = 16  # the tiny presets' global batch


def _steps(config, devices, batch, inputs=None, more: int = 0):
    """(state0, state1, loss, host inputs, method, [states after ``more`` further steps])."""
    state, step, method = _build(config, devices, batch)
    s0 = _host(state)
    if inputs is None:
        prepared = step.prepare(state.rng, state.step, batch)
    else:  # the same inputs, split over the batch axes of this mesh (no 8-device prepare)
        data = NamedSharding(method.mesh, batch_spec(method.mesh))
        prepared = jax.tree.map(lambda y: jax.device_put(y, data), inputs)
    host_inputs = jax.device_get(prepared)
    state, metrics = step.update(state, prepared)
    s1 = _host(state)
    later = []
    for _ in range(more):
        state, _ = step(state, batch)
        later.append(_host(state))
    return s0, s1, float(metrics["loss"]), host_inputs, method, later


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One step of each tiny preset on 1 device (plus one more step), and the same step on
    8 devices fed the 1-device prepared inputs; computed once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            # No warm-up: a first step at lr 0 would leave the params unchanged. DINO's
            # AdamW moves every param by about the lr in its first step: 0.01 × 16/256.
            # SiLU in MoCo v3's ResNet: no ReLU kinks in the 1-vs-8 comparison (step_check).
            overrides = {"optim.warmup_steps": 0, **({"optim.base_lr": 0.01} if name == "dino"
                                                     else SMOOTH_RESNET)}
            config = tiny_config(tmp_path_factory.mktemp(name), name, **overrides)
            batch = _batch()
            one = _steps(config, jax.devices()[:1], batch, more=int(name == "dino"))
            eight = _steps(config, jax.devices(), batch, inputs=one[3])
            cache[name] = (config, one, eight)
        return cache[name]

    return get


def _moved(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ---------------------------------------------------------------------------- MoCo v3
def _np_ctr(q, k, t):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = (qn @ kn.T / t).astype(np.float64)
    lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    return 2 * t * np.mean(lse - np.diag(logits))


def test_mocov3_loss_is_the_2t_scaled_symmetric_ce_over_the_global_batch(tmp_path):
    config = tiny_config(tmp_path, "mocov3")
    rng = np.random.default_rng(0)
    q1, q2, k1, k2 = (rng.normal(size=(N, 8)).astype(np.float32) for _ in range(4))
    for t in (0.2, 1.0):
        config.loss.temperature = t
        want = _np_ctr(q1, k2, t) + _np_ctr(q2, k1, t)
        for devices in (jax.devices()[:1], jax.devices()):
            method = get_method("mocov3")(config, make_mesh(config, devices=devices))
            got = jax.jit(lambda a, b, c, d, m=method: m.ctr(a, d) + m.ctr(b, c))(q1, q2, k1, k2)
            np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # Negatives come from every device: a per-device (local-batch) loss would differ.
    local = np.mean([_np_ctr(q1[i:i + 2], k2[i:i + 2], 1.0) for i in range(0, N, 2)])
    assert abs(local - _np_ctr(q1, k2, 1.0)) > 0.1
    g = jax.grad(lambda k: method.ctr(jnp.asarray(q1), k))(jnp.asarray(k2))
    assert np.all(np.asarray(g) == 0)  # the keys are stop-gradient


def test_mocov3_one_step_is_the_same_on_1_and_8_devices(runs):
    _, (s0, s1, l1, *_), (_, s8, l8, *_) = runs("mocov3")
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert 0.0 < l1 < 2 * 2 * 0.2 * (np.log(N) + 2 / 0.2)  # two ctr terms, each 2T·CE
    assert_same_update(s0.params, s1.params, s8.params)
    assert_same_update(s0.extra, s1.extra, s8.extra)  # the momentum encoder
    _assert_trees_close(s1.variables, s8.variables, rtol=1e-4, atol=1e-5)
    assert _moved(s0.params, s1.params) > 1e-4  # the step did change the params


def test_mocov3_momentum_encoder_moves_only_by_ema(runs):
    config, (s0, s1, _, inputs, method, _), _ = runs("mocov3")
    k0, k1 = s0.extra["momentum_encoder"], s1.extra["momentum_encoder"]
    assert set(k0["params"]) == {"encoder", "projector"}  # no predictor
    _assert_trees_close(target_part(s0.params), k0["params"], rtol=0, atol=0)
    m = _np_tau(0, config.train.steps, config.method_params.momentum)  # 0.99 at step 0
    want = jax.tree.map(lambda k, q: m * k + (1 - m) * q, k0["params"], target_part(s1.params))
    _assert_trees_close(want, k1["params"], rtol=1e-6, atol=1e-7)
    _assert_trees_close(k0["batch_stats"], k1["batch_stats"], rtol=0, atol=0)

    key = jax.random.key(3)
    batch = jax.tree.map(jnp.asarray, inputs)

    def loss(params, extra):
        return method.loss(params, s0.variables, extra, batch, key, jnp.int32(0))[0]

    g_params, g_extra = jax.jit(jax.grad(loss, argnums=(0, 1)))(s0.params, s0.extra)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_extra))
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(g_params["predictor"])
               if g.ndim == 2)


# ------------------------------------------------------------------------------- DINO
def test_dino_one_step_is_the_same_on_1_and_8_devices(runs):
    _, (s0, s1, l1, *_), (_, s8, l8, *_) = runs("dino")
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert 0.0 < l1 < np.log(64) + 1.0  # cross-entropy against 64 prototypes
    # The attention key bias has an exactly zero gradient (softmax ignores a constant added
    # to a query's logits): its float noise differs with the partitioning and AdamW's first
    # step turns any nonzero gradient into ±lr, so it is left out of the comparison.
    assert_same_update(s0.params, s1.params, s8.params, skip=("['key']['bias']",))
    assert_same_update(s0.extra, s1.extra, s8.extra, skip=("['key']['bias']",))  # teacher
    _assert_trees_close(s1.variables, s8.variables, rtol=1e-4, atol=1e-6)  # centre
    assert _moved(s0.params, s1.params) > 1e-4


def test_dino_center_is_the_ema_of_the_global_teacher_mean(runs):
    config, (s0, s1, _, inputs, method, _), _ = runs("dino")
    g = np.asarray(inputs["global_crops"])
    assert g.shape == (N, 2, 28, 28, 1) and inputs["local_crops"].shape == (N, 2, 12, 12, 1)
    # Teacher outputs of all 16 examples × 2 global crops, one crop batch at a time.
    apply = jax.jit(lambda v, x: method.teacher.apply(v, [x], train=True,
                                                      mutable=["batch_stats"])[0][1])
    t = np.concatenate([np.asarray(apply(s0.extra["teacher"], g[:, v])) for v in range(2)])
    m = config.method_params.center_momentum
    want = m * s0.variables["center"] + (1 - m) * t.mean(axis=0)
    np.testing.assert_allclose(s1.variables["center"], want, rtol=1e-4, atol=1e-6)
    assert np.abs(t.mean(0)).max() > 1e-3  # the mean is not trivially zero

    lam = _np_tau(0, config.train.steps, config.method_params.momentum_teacher)
    want = jax.tree.map(lambda a, b: lam * a + (1 - lam) * b, s0.extra["teacher"]["params"],
                        s1.params)
    _assert_trees_close(want, s1.extra["teacher"]["params"], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def dino_grads(runs):
    """Gradients of the DINO loss at the initial state w.r.t. (params, variables, extra)."""
    _, (s0, _, _, inputs, method, _), _ = runs("dino")
    batch = jax.tree.map(jnp.asarray, inputs)

    def loss(params, variables, extra):
        return method.loss(params, variables, extra, batch, jax.random.key(5), jnp.int32(0))[0]

    return jax.device_get(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        s0.params, s0.variables, s0.extra))


def test_dino_loss_has_no_gradient_into_teacher_or_center(dino_grads):
    g_p, g_v, g_e = dino_grads
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves((g_v, g_e)))
    assert float(sum(jnp.sum(g**2) for g in jax.tree.leaves(g_p))) > 0


def test_dino_last_layer_is_frozen_for_freeze_steps(runs):
    config, (s0, s1, _, _, method, (s2,)), _ = runs("dino")
    assert config.optim.freeze_steps == 1 and method.freeze_patterns() == {"last_layer": 1}
    last0, last1, last2 = (s.params["head"]["last_layer"] for s in (s0, s1, s2))
    _assert_trees_close(last0, last1, rtol=0, atol=0)  # step 1: inside the window
    assert _moved(last1, last2) > 1e-5  # step 2: trained
    assert _moved(s0.params["head"]["linear0"], s1.params["head"]["linear0"]) > 1e-5


def test_teacher_temperature_warms_up_linearly():
    for warm, final, steps in ((0.04, 0.07, 30 * 1251), (0.04, 0.07, 2), (0.05, 0.05, 10)):
        for k in (0, steps // 2, steps, 3 * steps):
            want = warm + (final - warm) * min(k / steps, 1.0)
            got = float(jax.jit(lambda s, w=warm, f=final, n=steps:
                                teacher_temperature(s, w, f, n))(jnp.int32(k)))
            assert got == pytest.approx(want, abs=1e-7)
    config = load_experiment(ROOT / "experiments" / "dino.py").get_config("imagenet_vits16")
    method = get_method("dino")(config, make_mesh(config, devices=jax.devices()[:1]))
    epoch = 1_281_167 // 1024
    for step, want in ((0, 0.04), (15 * epoch, 0.055), (30 * epoch, 0.07), (200 * epoch, 0.07)):
        assert float(method.teacher_temp_at(jnp.int32(step))) == pytest.approx(want, abs=1e-6)
    assert float(teacher_temperature(0, 0.04, 0.07, 0)) == pytest.approx(0.07)


@pytest.mark.parametrize("per_param", [True, False])
def test_gradient_clipping_engages(runs, dino_grads, per_param):
    """The DINO preset's clip (3.0) on real DINO gradients scaled ×100, through an SGD with
    lr 1 so the update is the clipped gradient."""
    config, (s0, *_), _ = runs("dino")
    grads = jax.tree.map(lambda g: 100.0 * np.asarray(g, np.float64), dino_grads[0])
    clip = config.optim.clip_grad_norm
    assert clip == 3.0 and config.optim.clip_per_param
    opt = {"name": "sgd", "base_lr": 1.0, "lr_scaling": "none", "momentum": 0.0,
           "schedule": "constant", "clip_grad_norm": clip, "clip_per_param": per_param}
    tx, _, _ = make_optimizer(opt, global_batch=N, total_steps=4)
    f32 = jax.tree.map(lambda g: g.astype(np.float32), grads)
    updates, _ = tx.update(f32, tx.init(s0.params), s0.params)
    norms = [np.linalg.norm(g) for g in jax.tree.leaves(grads)]
    if per_param:
        want = jax.tree.map(lambda g: -g * min(1.0, clip / (np.linalg.norm(g) + 1e-6)), grads)
        assert sum(n > clip for n in norms) >= 3  # several tensors really are clipped
        assert all(np.linalg.norm(u) <= clip * (1 + 1e-5) for u in jax.tree.leaves(updates))
    else:
        total = np.sqrt(sum(n**2 for n in norms))
        assert total > clip
        want = jax.tree.map(lambda g: -g * clip / total, grads)
        applied = np.sqrt(sum(np.sum(np.square(u)) for u in jax.tree.leaves(updates)))
        assert applied == pytest.approx(clip, rel=1e-5)
    _assert_trees_close(want, jax.tree.map(lambda u: np.asarray(u, np.float64), updates),
                        rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------ ViT multi-crop positions
def _np_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights: Keys cubic (a = −0.5) at half-pixel centres, renormalised."""
    def keys(x):
        x = np.abs(x)
        return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
                        np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0))

    centre = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    w = keys(centre[:, None] - np.arange(n_in)[None, :])
    return w / w.sum(axis=1, keepdims=True)


def test_vit_learned_positions_interpolate_for_local_crops():
    rng = np.random.default_rng(2)
    pos = rng.normal(size=(1, 49, 6)).astype(np.float32)  # a 7×7 grid
    got = np.asarray(interpolate_pos_embed(jnp.asarray(pos), (3, 3)))
    a = _np_bicubic_matrix(7, 3)
    want = np.einsum("ih,jw,hwd->ijd", a, a, pos.reshape(7, 7, 6)).reshape(1, 9, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    const = np.broadcast_to(np.arange(6, dtype=np.float32), (1, 49, 6))
    np.testing.assert_allclose(interpolate_pos_embed(jnp.asarray(const), (3, 3))[0, :, :],
                               np.broadcast_to(np.arange(6), (9, 6)), atol=1e-5)

    model = vit("tiny", pos_embed="learned", interpolate_pos=True, pool="none", use_cls=False,
                depth=0)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert variables["params"]["pos_embed"].shape == (1, 49, 32)
    x = jnp.asarray(rng.uniform(size=(2, 12, 12, 1)), jnp.float32)
    out = model.apply(variables, x)  # depth 0: LayerNorm(patch embedding + positions)
    ref = vit("tiny", pos_embed="learned", pool="none", use_cls=False, depth=0)
    small = dict(variables["params"])
    small["pos_embed"] = interpolate_pos_embed(small["pos_embed"], (3, 3))
    np.testing.assert_allclose(out, ref.apply({"params": small}, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("experiment, field, value, match", [
    ("mocov3", "method_params.momentum", 1.5, r"config.method_params.momentum=1.5 must be in"),
    ("mocov3", "loss.temperature", 0.0, r"config.loss.temperature=0.0 must be > 0"),
    ("dino", "optim.freeze_pattern", "head/linear0", r"freeze_pattern='head/linear0' does not"),
    ("dino", "method_params.student_temp", 0.0, r"method_params.student_temp=0.0 must be > 0"),
    ("dino", "method_params.center_momentum", 2.0, r"center_momentum=2.0 must be in \[0, 1\]"),
])
def test_bad_method_config_names_the_field(experiment, field, value, match):
    config = load_experiment(ROOT / "experiments" / f"{experiment}.py").get_config("tiny")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        get_method(experiment)(config, make_mesh(config, devices=jax.devices()[:1]))
