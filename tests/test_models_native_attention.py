"""The native CPU attention kernel (jssl/native/attention.cc via jax.ffi): values and
gradients against a float64 NumPy reference and Flax, the fallbacks, the switch, the build."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import native
from jssl.models import native_attention
from jssl.models.native_attention import attention, dot_product_attention


def _reference(q, k, v, g):
    """softmax(q·kᵀ/√D)·v per (b, h) in float64, and the gradients of Σ out·g."""
    q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, g))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    dp = np.einsum("bqhd,bkhd->bhqk", g, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhqk,bkhd->bqhd", ds, k) / np.sqrt(q.shape[-1])
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) / np.sqrt(q.shape[-1])
    dv = np.einsum("bhqk,bqhd->bkhd", p, g)
    return out, (dq, dk, dv)


def _operands(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape) * (scale if i < 2 else 1.0), jnp.float32)
            for i in range(4)]


@pytest.fixture(autouse=True)
def _on(monkeypatch):
    monkeypatch.setattr(native_attention, "ENABLED", True)


@pytest.mark.parametrize("shape", [(2, 13, 4, 32), (3, 50, 2, 16), (1, 1, 1, 16),
                                   (2, 17, 3, 64), (1, 20, 2, 128), (64, 16, 2, 16)])
def test_values_and_gradients_match_float64_reference(shape):
    """Every L (multiples of 16 and not, a single token), every head dim, and enough (b, h)
    pairs (128) to run many tasks on the thread pool."""
    q, k, v, g = _operands(shape)
    out, grads = jax.jit(jax.value_and_grad(
        lambda q, k, v: jnp.vdot(attention(q, k, v), g), (0, 1, 2)))(q, k, v)
    ref_out, ref_grads = _reference(q, k, v, g)
    np.testing.assert_allclose(float(out), np.vdot(ref_out, np.asarray(g, np.float64)),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.jit(attention)(q, k, v)), ref_out,
                               rtol=1e-5, atol=2e-6)
    for name, a, b in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4,
                                   atol=max(2e-5 * np.abs(b).max(), 1e-6), err_msg=f"d{name}")


def test_saturated_softmax_stays_finite_and_exact():
    """Logits of ±hundreds (a near one-hot softmax): no overflow, and exp's clamp at −87
    leaves the answer at the reference (float32 logits of that size carry ~1e-5 rounding,
    hence the looser tolerance; Flax's float32 attention is no closer)."""
    q, k, v, g = _operands((2, 24, 2, 16), seed=3, scale=12.0)
    ref_out, ref_grads = _reference(q, k, v, g)
    out = jax.jit(attention)(q, k, v)
    assert np.isfinite(np.asarray(out)).all()
    flax_error = np.abs(np.asarray(nn.dot_product_attention(q, k, v)) - ref_out).max()
    assert np.abs(np.asarray(out) - ref_out).max() <= max(2 * flax_error, 1e-5)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-4, atol=1e-4)
    grads = jax.grad(lambda q, k, v: jnp.vdot(attention(q, k, v), g), (0, 1, 2))(q, k, v)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=2e-4 * np.abs(b).max())


def test_drop_in_uses_the_kernel_only_where_it_applies():
    """Flax's signature; the custom call appears for plain float32 self-attention and not
    for a mask, a bias, dropout, bfloat16, an unsupported head dim or cross-attention, whose
    results stay Flax's."""
    q, k, v, _ = _operands((2, 6, 2, 16), seed=1)

    def targets(fn, *args, **kw):
        return str(jax.make_jaxpr(lambda *a: fn(*a, **kw))(*args)).count("jssl_attention")

    assert targets(dot_product_attention, q, k, v, deterministic=True) == 1
    np.testing.assert_allclose(np.asarray(dot_product_attention(q, k, v)),
                               np.asarray(nn.dot_product_attention(q, k, v)),
                               rtol=1e-5, atol=1e-6)
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    bias = jnp.ones((2, 2, 6, 6))
    q8 = q[..., :8]
    cases = {"mask": ((q, k, v), dict(mask=mask)), "bias": ((q, k, v), dict(bias=bias)),
             "dropout": ((q, k, v), dict(dropout_rate=0.5, deterministic=False,
                                         dropout_rng=jax.random.key(0))),
             "bf16": (tuple(a.astype(jnp.bfloat16) for a in (q, k, v)), {}),
             "head_dim_8": ((q8, k[..., :8], v[..., :8]), {}),
             "cross": ((q, k[:, :4], v[:, :4]), {})}
    for name, (args, kw) in cases.items():
        assert targets(dot_product_attention, *args, **kw) == 0, name
        np.testing.assert_allclose(  # the head-major fallback: Flax's to float32 rounding
            np.asarray(dot_product_attention(*args, **kw), np.float32),
            np.asarray(nn.dot_product_attention(*args, **kw), np.float32), rtol=1e-5,
            atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="head_major_attention"):
        attention(q8, k[..., :8], v[..., :8])


def test_vit_with_the_kernel_equals_head_major(monkeypatch):
    """A ViT's tokens and every parameter gradient are the same with the kernel (ENABLED)
    and without it; the default (None) keeps it off with more than one device."""
    from jssl.models import vit as vit_lib

    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 16, 16, 1)), jnp.float32)
    model = vit_lib.ViT(patch_size=4, dim=64, depth=2, num_heads=2)  # head dim 32
    variables = model.init(jax.random.key(0), x)

    def run():
        fn = jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(
            model.apply({"params": p}, x)))))
        text = str(jax.make_jaxpr(fn)(variables["params"]))
        return fn(variables["params"]), text.count("jssl_attention_forward")

    (loss_on, grads_on), calls = run()
    assert calls == 2  # one per block
    monkeypatch.setattr(native_attention, "ENABLED", False)
    (loss_off, grads_off), calls = run()
    assert calls == 0
    np.testing.assert_allclose(float(loss_on), float(loss_off), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(b).max())))
    monkeypatch.setattr(native_attention, "ENABLED", None)
    assert jax.device_count() == 8 and not native_attention.enabled()


def test_vmap_runs_the_kernel_per_element():
    q, k, v, _ = _operands((2, 9, 2, 16), seed=5)
    stacked = [jnp.stack([a, 2 * a]) for a in (q, k, v)]
    out = jax.vmap(attention)(*stacked)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(attention(2 * q, 2 * k, 2 * v)),
                               rtol=1e-6)


def test_build_is_cached_and_its_absence_falls_back(monkeypatch, tmp_path):
    """The library is built once into $JSSL_NATIVE_CACHE (a second load reuses the file); with
    no compiler, or a failing build, load() warns and returns None, ENABLED=None turns the
    kernel off and ENABLED=True raises a one-line error naming the fix."""
    monkeypatch.setenv("JSSL_NATIVE_CACHE", str(tmp_path / "cache"))
    native.load.cache_clear()
    assert native.load("attention") is not None
    built = list((tmp_path / "cache").glob("libattention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native.load.cache_clear()
    assert native.load("attention") is not None
    assert built[0].stat().st_mtime_ns == stamp and len(list(built[0].parent.iterdir())) == 1

    broken = tmp_path / "src"
    broken.mkdir()
    (broken / "attention.cc").write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", broken)
    native.load.cache_clear()
    with pytest.warns(UserWarning, match="building the native CPU kernel 'attention' failed"):
        assert native.load("attention") is None
    assert list((tmp_path / "cache").glob("*.so")) == built  # no partial file left behind

    monkeypatch.setattr(native, "compiler", lambda: None)
    native.load.cache_clear()
    monkeypatch.setattr(native_attention, "_registered",
                        native_attention._registered.__wrapped__)
    with pytest.warns(UserWarning, match="no C.. compiler"):
        monkeypatch.setattr(native_attention, "ENABLED", None)
        assert not native_attention._registered()
    monkeypatch.setattr(native_attention, "ENABLED", True)
    with pytest.raises(RuntimeError, match="ENABLED=True but the native kernel"):
        native_attention.enabled()
    native.load.cache_clear()


def test_mae_loss_and_gradients_with_the_kernel_equal_xla(monkeypatch):
    """The MAE model (encoder on the visible patches, decoder over all): the masked-patch
    MSE and every parameter gradient are the same with the native kernel and with XLA's
    attention, for the same masks."""
    from jssl.models.mae import mae

    images = jnp.asarray(np.random.default_rng(6).normal(size=(4, 16, 16, 1)), jnp.float32)
    model = mae("tiny", channels=1)  # head dim 16 in encoder and decoder
    rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
    params = model.init(rngs, images)["params"]

    def run():
        def loss(p):
            out = model.apply({"params": p}, images, rngs={"masking": jax.random.key(2)})
            per_patch = jnp.mean((out.pred - out.target) ** 2, axis=-1)
            return jnp.sum(per_patch * out.mask) / jnp.sum(out.mask)
        fn = jax.jit(jax.value_and_grad(loss))
        return fn(params), str(jax.make_jaxpr(fn)(params)).count("jssl_attention_forward")

    (loss_on, grads_on), calls = run()
    assert calls == 3  # two encoder blocks, one decoder block
    monkeypatch.setattr(native_attention, "ENABLED", False)
    (loss_off, grads_off), calls = run()
    assert calls == 0
    np.testing.assert_allclose(float(loss_on), float(loss_off), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(b).max())))
