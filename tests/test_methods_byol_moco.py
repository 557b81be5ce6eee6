"""BYOL and MoCo v2: the EMA rule and its cosine schedule, stop-gradient into the
target/key encoder, the MoCo queue (order, contents, shuffle BN), 1-vs-8-device steps."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_check import SMOOTH_RESNET, assert_same_update
from test_engine import ROOT, _build, load_experiment, tiny_config  # tests/ is on sys.path

from jssl.augment.recipes import mocov2_views
from jssl.methods import get_method
from jssl.methods.ema import cosine_tau, ema_update
from jssl.train.mesh import make_mesh

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("methods_byol_moco")

N = 16  # the tiny presets' global batch


def _batch():
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (N, 28, 28, 1), dtype=np.uint8),
            "label": np.arange(N, dtype=np.int32) % 10}


def _host(state):
    """The state on the host as NumPy (the PRNG key as its raw data)."""
    host = {f: jax.tree.map(np.asarray, jax.device_get(getattr(state, f)))
            for f in ("params", "variables", "extra")}
    return state.replace(rng=np.asarray(jax.random.key_data(state.rng)), **host)


def _run(config, devices, batch):
    """(state before, state after one step, loss, method) on ``devices``; states on host."""
    state, step, method = _build(config, devices, batch)
    before = _host(state)  # the step donates the state's buffers
    state, metrics = step(state, batch)
    return before, _host(state), float(metrics["loss"]), method


def _np_tau(step, total, base, end=1.0):
    return end - (end - base) * (math.cos(math.pi * min(step / total, 1.0)) + 1) / 2


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and la
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One step of each tiny preset on 1 and on 8 devices, computed once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            # No warm-up: a first step at lr 0 would leave the params unchanged. SiLU: no
            # ReLU kinks in the 1-vs-8 comparison (step_check).
            config = tiny_config(tmp_path_factory.mktemp(name), name,
                                 **{"optim.warmup_steps": 0, **SMOOTH_RESNET})
            batch = _batch()
            cache[name] = (config, _run(config, jax.devices()[:1], batch),
                           _run(config, jax.devices(), batch))
        return cache[name]

    return get


# ---------------------------------------------------------------------------- EMA rule
def test_cosine_tau_matches_byol_formula_at_0_half_and_end():
    for base, total in ((0.99, 100), (0.996, 1000)):
        for step in (0, total // 4, total // 2, total, 2 * total):
            np.testing.assert_allclose(float(cosine_tau(step, total, base)),
                                       _np_tau(step, total, base), rtol=0, atol=1e-7)
    assert float(cosine_tau(0, 100, 0.99)) == pytest.approx(0.99, abs=1e-7)
    assert float(cosine_tau(50, 100, 0.99)) == pytest.approx(0.995, abs=1e-7)
    assert float(cosine_tau(100, 100, 0.99)) == 1.0
    traced = jax.jit(lambda s: cosine_tau(s, 100, 0.9, end=0.98))(jnp.int32(50))
    assert float(traced) == pytest.approx(0.94, abs=1e-6)
    with pytest.raises(ValueError, match=r"total_steps=0 must be a positive int"):
        cosine_tau(0, 0)
    with pytest.raises(ValueError, match=r"base=1.5"):
        cosine_tau(0, 10, base=1.5)


def test_ema_update_is_the_leafwise_convex_combination():
    rng = np.random.default_rng(1)
    target = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": np.float32(2.0)}}
    online = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": np.float32(-1.0)}}
    out = ema_update(target, online, 0.9)
    np.testing.assert_allclose(out["a"], 0.9 * target["a"] + 0.1 * online["a"], rtol=1e-6)
    assert float(out["b"]["c"]) == pytest.approx(0.9 * 2.0 - 0.1, abs=1e-6)
    assert out["a"].dtype == jnp.float32
    np.testing.assert_array_equal(ema_update(target, online, 1.0)["a"], target["a"])
    np.testing.assert_array_equal(ema_update(target, online, 0.0)["a"], online["a"])
    with pytest.raises(ValueError, match=r"tau=1.2 must be in \[0, 1\]"):
        ema_update(target, online, 1.2)


# ------------------------------------------------------------------------------- BYOL
def test_byol_one_step_is_the_same_on_1_and_8_devices(runs):
    _, (s0, s1, l1, _), (_, s8, l8, _) = runs("byol")
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert 0.0 < l1 < 8.0  # two terms of 2 − 2·cos, each in [0, 4]
    assert_same_update(s0.params, s1.params, s8.params)
    assert_same_update(s0.extra, s1.extra, s8.extra)  # the EMA target / the key queue
    _assert_trees_close(s1.variables, s8.variables)
    moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(s0.params),
                                                   jax.tree.leaves(s1.params), strict=True)]
    assert max(moved) > 1e-4  # the step did change the params


def test_byol_target_starts_as_copy_and_follows_the_ema_rule(runs):
    config, _, (s0, s1, _, method) = runs("byol")
    target0, target1 = s0.extra["target"], s1.extra["target"]
    assert set(target0["params"]) == {"encoder", "projector"}  # no predictor in the target
    online0 = {k: s0.params[k] for k in ("encoder", "projector")}
    _assert_trees_close(online0, target0["params"], rtol=0, atol=0)
    _assert_trees_close({k: s0.variables["batch_stats"][k] for k in ("encoder", "projector")},
                        target0["batch_stats"], rtol=0, atol=0)

    tau = _np_tau(0, config.train.steps, config.method_params.tau_base)  # 0.99 at step 0
    online1 = {k: s1.params[k] for k in ("encoder", "projector")}
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, target0["params"], online1)
    _assert_trees_close(expected, target1["params"], rtol=1e-6, atol=1e-7)
    _assert_trees_close(target0["batch_stats"], target1["batch_stats"], rtol=0, atol=0)

    def dist(a, b):
        return math.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))

    before, after = dist(target0["params"], online1), dist(target1["params"], online1)
    assert before > 0 and after == pytest.approx(tau * before, rel=1e-4)

    # update_extra at other steps follows the cosine schedule (τ = 1 at the end: frozen).
    total = config.train.steps
    for step in (total // 2, total):
        tau = _np_tau(step, total, config.method_params.tau_base)
        new = method.update_extra(s1.params, s0.extra, jnp.int32(step))["target"]["params"]
        want = jax.tree.map(lambda t, o, tau=tau: tau * t + (1 - tau) * o, target0["params"],
                            online1)
        _assert_trees_close(want, new, rtol=1e-6, atol=1e-7)


def test_byol_loss_has_no_gradient_into_the_target(runs):
    config, (s0, _, _, method), _ = runs("byol")
    key = jax.random.key(3)
    batch = method.prepare(jax.tree.map(jnp.asarray, _batch()), key)

    def loss(params, extra):
        return method.loss(params, s0.variables, extra, batch, key, jnp.int32(0))[0]

    g_params, g_extra = jax.jit(jax.grad(loss, argnums=(0, 1)))(s0.params, s0.extra)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_extra))
    assert float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(g_params)))) > 0
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(g_params["predictor"])
               if g.ndim == 2)


def test_byol_features_are_the_online_encoder_output(runs):
    _, (s0, _, _, method), _ = runs("byol")
    images = jnp.zeros((4, 28, 28, 1))
    variables = {"params": s0.params, **s0.variables}
    feats = jax.eval_shape(method.features, variables, s0.extra, images)
    h = jax.eval_shape(lambda v, x: method.online.apply(v, x, train=False)[0], variables, images)
    assert feats.shape == h.shape and feats.shape[0] == 4


# ---------------------------------------------------------------------------- MoCo v2
def test_mocov2_one_step_is_the_same_on_1_and_8_devices(runs):
    _, (s0, s1, l1, _), (_, s8, l8, _) = runs("mocov2")
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert_same_update(s0.params, s1.params, s8.params)
    assert_same_update(s0.extra, s1.extra, s8.extra)  # the EMA target / the key queue
    _assert_trees_close(s1.variables, s8.variables, rtol=1e-4, atol=1e-5)
    moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(s0.params),
                                                   jax.tree.leaves(s1.params), strict=True)]
    assert max(moved) > 1e-4  # the step did change the params


def test_mocov2_queue_holds_the_new_keys_in_global_batch_order(runs):
    config, _, (s0, s1, loss, method) = runs("mocov2")
    k_size, group = config.method_params.queue_size, config.method_params.shuffle_bn_group
    q0, q1 = s0.variables["queue"], s1.variables["queue"]
    assert q0.shape == q1.shape == (k_size, config.model.projector.out_dim)
    np.testing.assert_allclose(np.linalg.norm(q0, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(q1[N:], q0[:-N])  # the oldest N keys dropped
    np.testing.assert_allclose(np.linalg.norm(q1[:N], axis=1), 1.0, atol=1e-5)
    assert 0.0 < loss < math.log(1 + k_size) + 5.0  # finite, positive

    # Recompute the keys: the step's key, MoCo v2 views, then shuffle BN written out by
    # hand: the key encoder on each group of a random permutation, results put back in place.
    key = jax.random.fold_in(jax.random.wrap_key_data(s0.rng), 0)
    view_key, perm_key = jax.random.split(key)
    images = jnp.asarray(_batch()["image"], jnp.float32) / 255.0
    _, x_k = mocov2_views(view_key, images, config.augment.size, params=method.view_params)
    perm = np.asarray(jax.random.permutation(perm_key, N))
    apply = jax.jit(lambda v, x: method.key_net.apply(v, x, train=True,
                                                      mutable=["batch_stats"])[0][1])
    keys = np.zeros((N, q0.shape[1]), np.float32)
    for g in range(N // group):
        idx = perm[g * group:(g + 1) * group]
        keys[idx] = np.asarray(apply(s0.extra["key_encoder"], x_k[idx]))
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    np.testing.assert_allclose(q1[:N], keys, rtol=1e-4, atol=2e-5)
    # Global BN over the whole batch would give different keys: the shuffle matters.
    global_keys = np.asarray(apply(s0.extra["key_encoder"], x_k))
    global_keys = global_keys / np.linalg.norm(global_keys, axis=1, keepdims=True)
    assert np.max(np.abs(global_keys - keys)) > 1e-3


def test_mocov2_key_encoder_is_a_momentum_average(runs):
    config, _, (s0, s1, _, method) = runs("mocov2")
    m = config.method_params.momentum
    _assert_trees_close(s0.params, s0.extra["key_encoder"]["params"], rtol=0, atol=0)
    expected = jax.tree.map(lambda k, q: m * k + (1 - m) * q,
                            s0.extra["key_encoder"]["params"], s1.params)
    _assert_trees_close(expected, s1.extra["key_encoder"]["params"], rtol=1e-6, atol=1e-7)

    cfg = config.copy_and_resolve_references()
    cfg.method_params.momentum_schedule = "cosine"
    cosine = get_method("mocov2")(cfg, method.mesh)
    total = cfg.train.steps
    for step in (0, total // 2, total):
        mk = _np_tau(step, total, m)
        new = cosine.update_extra(s1.params, s0.extra, jnp.int32(step))["key_encoder"]["params"]
        want = jax.tree.map(lambda k, q, mk=mk: mk * k + (1 - mk) * q,
                            s0.extra["key_encoder"]["params"], s1.params)
        _assert_trees_close(want, new, rtol=1e-6, atol=1e-7)


def test_mocov2_loss_has_no_gradient_into_keys_or_queue(runs):
    _, (s0, _, _, method), _ = runs("mocov2")
    key = jax.random.key(5)
    batch = method.prepare(jax.tree.map(jnp.asarray, _batch()), key)

    def loss(params, variables, extra):
        return method.loss(params, variables, extra, batch, key, jnp.int32(0))[0]

    g_params, g_vars, g_extra = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        s0.params, s0.variables, s0.extra)
    assert np.all(np.asarray(g_vars["queue"]) == 0)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_extra))
    assert float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(g_params)))) > 0


@pytest.mark.parametrize("experiment, field, value, match", [
    ("mocov2", "method_params.queue_size", 8,
     r"config.method_params.queue_size=8 is smaller than config.train.batch_size=16"),
    ("mocov2", "method_params.momentum_schedule", "linear",
     r"config.method_params.momentum_schedule='linear' is unknown"),
    ("mocov2", "method_params.shuffle_bn_group", 3,
     r"config.method_params.shuffle_bn_group=3 must be 0 \(global BN\) or divide"),
    ("mocov2", "method_params.momentum", 1.5, r"config.method_params.momentum=1.5 must be in"),
    ("byol", "method_params.tau_base", 1.5, r"config.method_params.tau_base=1.5 must be in"),
])
def test_bad_method_config_names_the_field(experiment, field, value, match):
    config = load_experiment(ROOT / "experiments" / f"{experiment}.py").get_config("tiny")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        get_method(experiment)(config, make_mesh(config, devices=jax.devices()[:1]))
