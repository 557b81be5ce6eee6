"""Optimizers against NumPy re-implementations of the update rules."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jssl.train.optim import make_optimizer, param_paths


def _cfg(**kw):
    base = dict(name="adamw", base_lr=0.1, lr_scaling="none", schedule="constant",
                warmup_steps=0, weight_decay=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _params(seed=0):
    r = np.random.default_rng(seed)
    return {
        "backbone": {"kernel": r.normal(size=(4, 3)).astype(np.float32),
                     "bias": r.normal(size=(3,)).astype(np.float32)},
        "head": {"last": {"kernel": r.normal(size=(3, 2)).astype(np.float32)},
                 "norm": {"scale": r.normal(size=(2,)).astype(np.float32)}},
    }


def _grads(step):
    r = np.random.default_rng(100 + step)
    return jax.tree.map(lambda p: r.normal(size=p.shape).astype(np.float32), _params())


def _run(tx, n_steps, params=None):
    params = jax.tree.map(jnp.asarray, _params() if params is None else params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for t in range(n_steps):
        updates, state = update(jax.tree.map(jnp.asarray, _grads(t)), state, params)
        history.append(jax.tree.map(np.asarray, updates))
        params = optax.apply_updates(params, updates)
    return jax.tree.map(np.asarray, params), history


def _np_leaves(tree):
    return jax.tree.leaves(tree)


@pytest.mark.parametrize("scaling, expected", [
    ("linear", 0.3 * 1024 / 256), ("sqrt", 0.3 * 2.0), ("none", 0.3)])
def test_lr_scaling_rule(scaling, expected):
    _, sched, info = make_optimizer(_cfg(base_lr=0.3, lr_scaling=scaling),
                                    global_batch=1024, total_steps=10)
    assert info["peak_lr"] == pytest.approx(expected)
    assert info["lr_scaling"] == scaling and info["global_batch"] == 1024
    assert float(sched(5)) == pytest.approx(expected)


def test_warmup_cosine_schedule_values():
    _, sched, info = make_optimizer(
        _cfg(base_lr=1.0, schedule="cosine", warmup_steps=10, end_lr_factor=0.1),
        global_batch=256, total_steps=110)
    peak, end = 1.0, 0.1
    steps = [0, 5, 10, 35, 60, 109, 110]
    got = np.asarray(jax.jit(jax.vmap(sched))(jnp.array(steps)))
    for step, value in zip(steps, got, strict=True):
        if step < 10:
            ref = peak * step / 10
        else:
            frac = (step - 10) / 100
            ref = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))
        assert float(value) == pytest.approx(ref, rel=1e-5, abs=1e-7), step
    assert info["end_lr"] == pytest.approx(0.1)


def test_warmup_linear_decay_schedule_values():
    _, sched, _ = make_optimizer(
        _cfg(base_lr=2.0, schedule="linear", warmup_steps=8, end_lr_factor=0.25),
        global_batch=256, total_steps=40)
    steps = [0, 4, 8, 16, 24, 40]
    # warm-up 0 -> 2 over 8 steps, then a straight line from 2 (step 8) to 0.5 (step 40)
    ref = [0.0, 1.0, 2.0, 2.0 - 1.5 * 8 / 32, 2.0 - 1.5 * 16 / 32, 0.5]
    np.testing.assert_allclose([float(sched(s)) for s in steps], ref, rtol=1e-6)


def test_constant_schedule_with_warmup():
    _, sched, _ = make_optimizer(_cfg(base_lr=0.5, warmup_steps=4), global_batch=256,
                                 total_steps=20)
    np.testing.assert_allclose([float(sched(s)) for s in [0, 2, 4, 19]], [0, 0.25, 0.5, 0.5],
                               rtol=1e-6)


def test_adamw_matches_numpy_with_decay_mask_and_b2():
    lr, wd, b1, b2, eps = 0.01, 0.05, 0.9, 0.95, 1e-8
    tx, _, _ = make_optimizer(_cfg(base_lr=lr, weight_decay=wd, b2=b2),
                              global_batch=256, total_steps=10)
    got, _ = _run(tx, 3)
    p = _params()
    m = jax.tree.map(np.zeros_like, p)
    v = jax.tree.map(np.zeros_like, p)
    for t in range(3):
        g = _grads(t)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)

        def step(p_, m_, v_, t=t):
            u = (m_ / (1 - b1 ** (t + 1))) / (np.sqrt(v_ / (1 - b2 ** (t + 1))) + eps)
            if p_.ndim > 1:  # biases and norm params get no decay
                u = u + wd * p_
            return p_ - lr * u

        p = jax.tree.map(step, p, m, v)
    for a, b in zip(_np_leaves(got), _np_leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lars_matches_numpy_and_excludes_1d_from_trust_ratio():
    lr, wd, mom, tc = 0.2, 1e-3, 0.9, 0.001
    tx, _, _ = make_optimizer(_cfg(name="lars", base_lr=lr, weight_decay=wd, momentum=mom),
                              global_batch=256, total_steps=10)
    got, _ = _run(tx, 3)
    p = _params()
    buf = jax.tree.map(np.zeros_like, p)
    for t in range(3):
        g = _grads(t)

        def scaled(p_, g_):
            if p_.ndim <= 1:
                return -lr * g_
            u = g_ + wd * p_
            return -lr * tc * np.linalg.norm(p_) / np.linalg.norm(u) * u

        buf = jax.tree.map(lambda b, p_, g_: scaled(p_, g_) + mom * b, buf, p, g)
        p = jax.tree.map(lambda p_, b: p_ + b, p, buf)
    for a, b in zip(_np_leaves(got), _np_leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sgd_l2_momentum_and_clipping():
    lr, wd, mom, clip = 0.1, 0.01, 0.9, 0.5
    tx, _, info = make_optimizer(
        _cfg(name="sgd", base_lr=lr, weight_decay=wd, momentum=mom, clip_grad_norm=clip),
        global_batch=256, total_steps=10)
    assert info["clip_grad_norm"] == clip
    got, _ = _run(tx, 2)
    p = _params()
    buf = jax.tree.map(np.zeros_like, p)
    for t in range(2):
        g = _grads(t)
        norm = np.sqrt(sum(float((x ** 2).sum()) for x in jax.tree.leaves(g)))
        assert norm > clip  # the clip is active
        g = jax.tree.map(lambda x, norm=norm: x * clip / norm, g)
        g = jax.tree.map(lambda g_, p_: g_ + wd * p_ if p_.ndim > 1 else g_, g, p)
        buf = jax.tree.map(lambda b, g_: g_ + mom * b, buf, g)
        p = jax.tree.map(lambda p_, b: p_ - lr * b, p, buf)
    for a, b in zip(_np_leaves(got), _np_leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_cosine_weight_decay_schedule_dino():
    lr, wd0, wd1, total = 0.1, 0.04, 0.4, 4
    tx, _, info = make_optimizer(_cfg(base_lr=lr, weight_decay=wd0, weight_decay_end=wd1),
                                 global_batch=256, total_steps=total)
    assert (info["weight_decay"], info["weight_decay_end"]) == (wd0, wd1)
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.ones((2,))}
    state = tx.init(params)
    update = jax.jit(tx.update)
    p = 2.0
    for t in range(total + 1):
        # Zero gradients: Adam's part is exactly 0, only the decoupled decay moves params.
        updates, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
        wd_t = wd1 + 0.5 * (wd0 - wd1) * (1 + math.cos(math.pi * min(t, total) / total))
        np.testing.assert_allclose(updates["w"], -lr * wd_t * p, rtol=1e-5)
        assert float(jnp.abs(updates["b"]).max()) == 0.0
        params = optax.apply_updates(params, updates)
        p = p * (1 - lr * wd_t)


@pytest.mark.parametrize("name", ["lamb", "adam"])
def test_other_optimizers_reduce_a_quadratic(name):
    tx, _, _ = make_optimizer(_cfg(name=name, base_lr=0.05, weight_decay=1e-4),
                              global_batch=256, total_steps=300)
    target = jnp.arange(1.0, 7.0).reshape(2, 3)
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}
    loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum(p["b"] ** 2)

    def body(_, carry):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    first = float(loss(params))
    params, _ = jax.jit(lambda c: jax.lax.fori_loop(0, 300, body, c))((params, tx.init(params)))
    assert float(loss(params)) < 0.01 * first


def test_freeze_zeroes_updates_for_first_k_steps():
    lr, b1, b2, eps, k = 0.01, 0.9, 0.999, 1e-8, 2
    tx, _, info = make_optimizer(
        _cfg(base_lr=lr, weight_decay=0.1, freeze_pattern=r"^head/last/", freeze_steps=k),
        global_batch=256, total_steps=10)
    assert info["freeze_steps"] == k
    assert param_paths(_params())["head"]["last"]["kernel"] == "head/last/kernel"
    _, hist = _run(tx, k + 1)
    for t in range(k):
        assert np.all(hist[t]["head"]["last"]["kernel"] == 0.0)  # not even weight decay
        assert np.all(hist[t]["backbone"]["kernel"] != 0.0)
        assert np.all(hist[t]["head"]["norm"]["scale"] != 0.0)
    # First live step: Adam moments hold only this step's gradient (the frozen grads were
    # zeroed), bias-corrected with the global step count k + 1.
    p0 = _params()["head"]["last"]["kernel"]
    g = _grads(k)["head"]["last"]["kernel"]
    m_hat = (1 - b1) * g / (1 - b1 ** (k + 1))
    v_hat = (1 - b2) * g * g / (1 - b2 ** (k + 1))
    ref = -lr * (m_hat / (np.sqrt(v_hat) + eps) + 0.1 * p0)
    np.testing.assert_allclose(hist[k]["head"]["last"]["kernel"], ref, rtol=1e-5, atol=1e-7)


def test_masks_work_on_abstract_params():
    tx, _, _ = make_optimizer(_cfg(name="lars", weight_decay=1e-4, freeze_pattern="head",
                                   freeze_steps=3), global_batch=256, total_steps=10)
    abstract = jax.eval_shape(tx.init, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params()))
    concrete = tx.init(jax.tree.map(jnp.asarray, _params()))
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)


def test_freeze_works_under_jit():
    tx, _, _ = make_optimizer(_cfg(name="sgd", freeze_pattern="bias", freeze_steps=1),
                              global_batch=256, total_steps=10)
    params = jax.tree.map(jnp.asarray, _params())
    state = tx.init(params)
    step = jax.jit(tx.update)
    u1, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    u2, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    assert float(jnp.abs(u1["backbone"]["bias"]).sum()) == 0.0
    np.testing.assert_allclose(u2["backbone"]["bias"], -0.1 * np.ones(3), rtol=1e-6)


@pytest.mark.parametrize("kw, field", [
    (dict(name="adamx"), "config.optim.name='adamx'"),
    (dict(base_lr=-0.1), "config.optim.base_lr=-0.1"),
    (dict(warmup_steps=20), "config.optim.warmup_steps=20"),
    (dict(lr_scaling="log"), "config.optim.lr_scaling='log'"),
    (dict(schedule="step"), "config.optim.schedule='step'"),
    (dict(weight_decay=-1.0), "config.optim.weight_decay=-1.0"),
    (dict(b2=1.0), "config.optim.b2=1.0"),
    (dict(freeze_pattern="(", freeze_steps=3), "config.optim.freeze_pattern='('"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError) as err:
        make_optimizer(_cfg(**kw), global_batch=256, total_steps=10)
    msg = str(err.value)
    assert msg.startswith(field) and "\n" not in msg
