"""The native CPU attention kernel (jssl/native/attention.cc via jax.ffi): values and
gradients against a float64 NumPy reference and Flax, the fallbacks, the switch, the build."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

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


def _masked_reference(q, k, v, g, mask, keep=None, keep_prob=1.0):
    """Flax's masked attention (hidden scores = finfo(float32).min, so a fully masked row is
    uniform) with dropout where(keep, P/κ, 0), in float64, and the gradients of Σ out·g
    (none through hidden scores)."""
    q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, g))
    b, length, h, d = q.shape
    mask = np.broadcast_to(np.asarray(mask, bool), (b, h, length, length))
    keep = np.ones((b, h, length, length), bool) if keep is None else np.asarray(keep)
    s = np.where(mask, np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d),
                 np.finfo(np.float32).min)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dropped = np.where(keep, p / keep_prob, 0.0)
    out = np.einsum("bhqk,bkhd->bqhd", dropped, v)
    dp = np.where(keep, np.einsum("bqhd,bkhd->bhqk", g, v) / keep_prob, 0.0)
    ds = np.where(mask, p * (dp - (dp * p).sum(-1, keepdims=True)), 0.0)
    dq = np.einsum("bhqk,bkhd->bqhd", ds, k) / np.sqrt(d)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) / np.sqrt(d)
    dv = np.einsum("bhqk,bqhd->bkhd", dropped, g)
    return out, (dq, dk, dv)


@pytest.mark.parametrize("case", ["padding", "causal", "per_head", "dropout",
                                  "padding_dropout"])
def test_masks_and_dropout_match_float64_reference(case):
    """BERT's padding mask (padded queries see no key: uniform rows, as Flax), GPT's causal
    mask, a per-(batch, head) mask, and a dropout keep mask: values and gradients."""
    b, length, h = 3, 21, 2
    q, k, v, g = _operands((b, length, h, 32), seed=7)
    rng = np.random.default_rng(8)
    valid = np.arange(length)[None] < np.array([[21], [9], [1]])
    masks = {"padding": (valid[:, None, :, None] & valid[:, None, None, :]),
             "causal": np.tril(np.ones((length, length), bool))[None, None],
             "per_head": rng.random((b, h, length, length)) > 0.5}
    mask = masks.get(case.removesuffix("_dropout"))
    keep = rng.random((b, h, length, length)) > 0.3 if "dropout" in case else None
    kw = dict(mask=None if mask is None else jnp.asarray(mask),
              keep=None if keep is None else jnp.asarray(keep), keep_prob=0.7)
    out, grads = jax.jit(lambda q, k, v: (attention(q, k, v, **kw), jax.grad(
        lambda q, k, v: jnp.vdot(attention(q, k, v, **kw), g), (0, 1, 2))(q, k, v)))(q, k, v)
    ref_out, ref_grads = _masked_reference(q, k, v, g, True if mask is None else mask, keep,
                                           0.7 if keep is not None else 1.0)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-5, atol=5e-6)
    for name, a, r in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(a), r, rtol=1e-4,
                                   atol=max(2e-5 * np.abs(r).max(), 1e-6), err_msg=f"d{name}")


def test_drop_in_uses_the_kernel_only_where_it_applies():
    """Flax's signature; the custom call appears for float32 self-attention with or without a
    mask or attention dropout (Flax's keep mask, same key), and not for a bias, bfloat16, an
    unsupported head dim, cross-attention or a mask it cannot broadcast, whose results stay
    Flax's (to float32 rounding: the head-major fallback)."""
    q, k, v, _ = _operands((2, 6, 2, 16), seed=1)

    def targets(fn, *args, **kw):
        return str(jax.make_jaxpr(lambda *a: fn(*a, **kw))(*args)).count("jssl_attention")

    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    dropout = dict(dropout_rate=0.5, deterministic=False, dropout_rng=jax.random.key(0))
    q8 = q[..., :8]
    native_cases = {"plain": ((q, k, v), {}), "mask": ((q, k, v), dict(mask=mask)),
                    "dropout": ((q, k, v), dropout),
                    "dropout_per_head": ((q, k, v), dict(dropout, broadcast_dropout=False))}
    fallback_cases = {"bias": ((q, k, v), dict(bias=jnp.ones((2, 2, 6, 6)))),
                      "bf16": (tuple(a.astype(jnp.bfloat16) for a in (q, k, v)), {}),
                      "head_dim_8": ((q8, k[..., :8], v[..., :8]), {}),
                      "cross": ((q, k[:, :4], v[:, :4]), {}),
                      "mask_3d": ((q, k, v), dict(mask=mask[0]))}
    for calls, cases in ((1, native_cases), (0, fallback_cases)):
        for name, (args, kw) in cases.items():
            assert targets(dot_product_attention, *args, **kw) == calls, name
            np.testing.assert_allclose(
                np.asarray(dot_product_attention(*args, **kw), np.float32),
                np.asarray(nn.dot_product_attention(*args, **kw), np.float32), rtol=1e-5,
                atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="head_major_attention"):
        attention(q8, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="keep of shape"):
        attention(q, k, v, keep=jnp.ones((2, 2, 6, 5), bool))


def _same_with_and_without(monkeypatch, loss, params, calls: int) -> None:
    """``loss(params)`` and every gradient with the kernel (``calls`` custom calls traced)
    equal those with XLA's attention (none traced)."""
    results = []
    for on, expected in ((True, calls), (False, 0)):
        monkeypatch.setattr(native_attention, "ENABLED", on)
        fn = jax.jit(jax.value_and_grad(loss))
        assert str(jax.make_jaxpr(fn)(params)).count("jssl_attention_forward") == expected
        results.append(fn(params))
    (loss_on, grads_on), (loss_off, grads_off) = results
    np.testing.assert_allclose(float(loss_on), float(loss_off), rtol=1e-5)
    for a, r in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(r).max())))


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_text_block_with_the_kernel_equals_xla(monkeypatch, kind):
    """A training-mode transformer block (BERT: post-norm, padding mask, attention dropout
    0.1; GPT: pre-norm, causal mask): output and every parameter gradient the same with the
    kernel and with XLA's attention: the same function and the same dropout bits."""
    from jssl.models.transformer import BlockConfig, TransformerBlock, make_causal_mask

    b, length = 3, 19
    cfg = BlockConfig(dim=64, num_heads=2, mlp_dim=128, pre_norm=kind == "gpt",
                      attention_dropout_rate=0.1 if kind == "bert" else 0.0)
    x = jnp.asarray(np.random.default_rng(9).normal(size=(b, length, 64)), jnp.float32)
    valid = jnp.arange(length)[None] < jnp.array([[19], [11], [4]])
    mask = (valid[:, None, :, None] & valid[:, None, None, :] if kind == "bert"
            else make_causal_mask(length))
    block = TransformerBlock(cfg)
    params = block.init(jax.random.key(0), x, mask=mask)["params"]

    def loss(p):
        y = block.apply({"params": p}, x, mask=mask, deterministic=False,
                        rngs={"dropout": jax.random.key(5)})
        return jnp.sum(jnp.sin(y) * valid[..., None])

    _same_with_and_without(monkeypatch, loss, params, calls=1)


def test_vit_with_the_kernel_equals_head_major(monkeypatch):
    """A ViT's tokens and every parameter gradient are the same with the kernel (ENABLED)
    and without it; the default (None) keeps it off with more than one device."""
    from jssl.models import vit as vit_lib

    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 16, 16, 1)), jnp.float32)
    model = vit_lib.ViT(patch_size=4, dim=64, depth=2, num_heads=2)  # head dim 32
    variables = model.init(jax.random.key(0), x)

    _same_with_and_without(monkeypatch, lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x))),
                           variables["params"], calls=2)  # one per block
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

    def loss(p):
        out = model.apply({"params": p}, images, rngs={"masking": jax.random.key(2)})
        per_patch = jnp.mean((out.pred - out.target) ** 2, axis=-1)
        return jnp.sum(per_patch * out.mask) / jnp.sum(out.mask)

    _same_with_and_without(monkeypatch, loss, params, calls=3)  # 2 encoder + 1 decoder blocks


_PORTABLE_CHECK = """
import jax, jax.numpy as jnp, numpy as np
from jssl import native
from jssl.models.native_attention import attention
rng = np.random.default_rng(0)
q, k, v, g = (jnp.asarray(rng.standard_normal((2, 21, 2, 32)), jnp.float32) for _ in range(4))
mask = jnp.asarray(np.tril(np.ones((21, 21), bool))[None, None])
keep = jnp.asarray(rng.random((2, 2, 21, 21)) > 0.3)
out, grads = jax.value_and_grad(lambda q, k, v: jnp.vdot(attention(
    q, k, v, mask=mask, keep=keep, keep_prob=0.7), g), (0, 1, 2))(q, k, v)
lib = native.load("attention")
np.savez(OUT, out=float(out), dq=grads[0], dk=grads[1], dv=grads[2], lib=lib._name)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64-v3 is an x86 target")
def test_a_portable_build_computes_the_same(tmp_path):
    """``JSSL_NATIVE_MARCH=x86-64-v3`` builds the kernel for AVX2 (8-float vectors, no zmm
    register in the library): with a causal mask and dropout its value and gradients match
    the float64 reference, as the native build's do."""
    out = tmp_path / "portable.npz"
    env = {**os.environ, "JSSL_NATIVE_MARCH": "x86-64-v3", "JSSL_NATIVE_CACHE": str(tmp_path),
           "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}\n" + _PORTABLE_CHECK],
                   env=env, check=True, timeout=300)
    got = np.load(out)
    assert Path(got["lib"].item()).parent == tmp_path  # built there, not read from a cache
    if shutil.which("objdump"):
        code = subprocess.run(["objdump", "-d", got["lib"].item()], capture_output=True,
                              text=True, check=True).stdout
        assert "ymm" in code and "zmm" not in code
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((2, 21, 2, 32)).astype(np.float32) for _ in range(4))
    keep = rng.random((2, 2, 21, 21)) > 0.3
    ref_out, ref_grads = _masked_reference(q, k, v, g, np.tril(np.ones((21, 21), bool)), keep,
                                           0.7)
    np.testing.assert_allclose(float(got["out"]), np.vdot(ref_out, g.astype(np.float64)),
                               rtol=1e-5, atol=1e-4)
    for name, r in zip(("dq", "dk", "dv"), ref_grads, strict=True):
        np.testing.assert_allclose(got[name], r, rtol=1e-4, atol=2e-5 * np.abs(r).max(),
                                   err_msg=name)
