"""Tests for the shared transformer block, BERT, GPT-2 and T5 (tiny presets)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models import bert, gpt, t5
from jssl.models.transformer import (
    BlockConfig,
    MultiHeadAttention,
    TransformerStack,
    make_causal_mask,
    make_padding_mask,
)

VOCAB = 50
# Tests check values, not speed: unoptimised XLA code compiles ~3x faster on CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def _tokens(seed, shape, vocab=VOCAB):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def _layernorm(x, scale, bias, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _init(model, *args):
    """Eager init (op kernels are cached across tests; cheaper than a jit compile per model)."""
    return model.init(jax.random.key(0), *args)["params"]


def _fwd(model):
    """Eager `model.apply`; jit is exercised by the gradient tests and `generate`."""
    return model.apply


def _finite_grads(fn, params):
    grads = _jit(jax.grad(fn))(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


# ----------------------------------------------------------------------------- transformer
def test_masks():
    np.testing.assert_array_equal(make_causal_mask(3)[0, 0], np.tril(np.ones((3, 3), bool)))
    valid = jnp.array([[True, True, False]])
    m = make_padding_mask(valid)
    assert m.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(m[0, 0], np.outer([1, 1, 0], [1, 1, 0]).astype(bool))


def test_attention_matches_numpy():
    cfg = BlockConfig(dim=32, num_heads=2, mlp_dim=64)
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 32))
    bias = jax.random.normal(jax.random.key(2), (1, 2, 8, 5))
    mask = jnp.array([True, True, True, True, False])[None, None, None, :]
    mod = MultiHeadAttention(cfg)
    params = mod.init(jax.random.key(3), x, ctx)["params"]
    out = mod.apply({"params": params}, x, ctx, mask=mask, bias=bias)
    p = jax.tree.map(np.asarray, params)
    xn, cn, bn = np.asarray(x), np.asarray(ctx), np.asarray(bias)
    q = np.einsum("bld,dhk->blhk", xn, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", cn, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", cn, p["value"]["kernel"]) + p["value"]["bias"]
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(16) + bn
    logits[..., 4] = -np.inf
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ref = np.einsum("bhqs,bshk->bqhk", w, v)
    ref = np.einsum("bqhk,hkd->bqd", ref, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_stack_layerdrop_and_validation():
    cfg = BlockConfig(dim=32, num_heads=2, mlp_dim=64, pre_norm=False)
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    stack = TransformerStack(cfg, num_layers=2, final_norm=False, layerdrop=0.99)
    params = stack.init(jax.random.key(1), x)["params"]
    # keep probability 0.01 per layer (P(both skipped) = 0.98); with this fixed key both
    # layers are skipped, so the post-LN stack without a final norm is the identity
    out = stack.apply({"params": params}, x, deterministic=False,
                      rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(out, x)
    full = stack.apply({"params": params}, x)  # eval: every layer runs
    assert not np.allclose(full, x, atol=1e-2)
    with pytest.raises(ValueError, match="layerdrop"):
        TransformerStack(cfg, num_layers=2, layerdrop=1.0).init(jax.random.key(1), x)


def test_block_config_validation():
    with pytest.raises(ValueError, match="num_heads"):
        BlockConfig(dim=10, num_heads=3, mlp_dim=8)
    with pytest.raises(ValueError, match="norm"):
        BlockConfig(dim=8, num_heads=2, mlp_dim=8, norm="batchnorm")
    with pytest.raises(ValueError, match="activation"):
        BlockConfig(dim=8, num_heads=2, mlp_dim=8, activation="swish")


# ----------------------------------------------------------------------------- BERT
# One float32 init per model, shared by the tests (eager op kernels are cached per shape);
# bfloat16 shapes/dtypes are checked with `jax.eval_shape` (no compilation).
@pytest.fixture(scope="module")
def bert_setup():
    model = bert.bert("tiny", VOCAB)
    tok = _tokens(0, (2, 8))
    seg = jnp.array([[0] * 4 + [1] * 4] * 2)
    return model, _init(model, tok, seg), tok, seg


def test_bert_shapes_and_grads(bert_setup):
    model, params, tok, seg = bert_setup
    fwd = _fwd(model)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out = fwd({"params": params}, tok, seg)
    assert out["hidden"].shape == (2, 8, 32) and out["hidden"].dtype == jnp.float32
    assert out["pooled"].shape == (2, 32)
    assert out["mlm_logits"].shape == (2, 8, VOCAB) and out["mlm_logits"].dtype == jnp.float32
    assert out["nsp_logits"].shape == (2, 2) and out["nsp_logits"].dtype == jnp.float32
    pos = jnp.array([[1, 3], [0, 7]])
    sub = fwd({"params": params}, tok, seg, mlm_positions=pos)["mlm_logits"]
    np.testing.assert_allclose(sub, jnp.take_along_axis(out["mlm_logits"], pos[..., None], 1),
                               rtol=1e-6, atol=1e-6)

    def loss(p):
        o = model.apply({"params": p}, tok, seg, deterministic=False,
                        rngs={"dropout": jax.random.key(1)})
        return o["mlm_logits"].mean() + o["nsp_logits"].mean()

    _finite_grads(loss, params)


def test_bert_bfloat16_shapes(bert_setup):
    _, params, tok, seg = bert_setup
    model = bert.bert("tiny", VOCAB, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.key(0), tok, seg)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    out = jax.eval_shape(model.apply, {"params": params}, tok, seg)
    assert out["hidden"].dtype == jnp.bfloat16 and out["hidden"].shape == (2, 8, 32)
    assert out["mlm_logits"].dtype == jnp.float32 and out["mlm_logits"].shape == (2, 8, VOCAB)


def test_bert_padding_invariance(bert_setup):
    model, params, tok, _ = bert_setup
    fwd = _fwd(model)
    valid = jnp.array([[True] * 5 + [False] * 3, [True] * 8])
    tok2 = tok.at[0, 5:].set((tok[0, 5:] + 7) % VOCAB)
    a = fwd({"params": params}, tok, padding_mask=valid)["hidden"]
    b = fwd({"params": params}, tok2, padding_mask=valid)["hidden"]
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
    np.testing.assert_array_equal(a[1], b[1])
    c = fwd({"params": params}, tok2)["hidden"]  # unmasked: padded tokens leak
    assert not np.allclose(a[0, :5], c[0, :5])


def test_bert_tied_mlm_head(bert_setup):
    model, params, tok, seg = bert_setup
    out = _fwd(model)({"params": params}, tok, seg)
    p = jax.tree.map(np.asarray, params)
    h = np.asarray(out["hidden"]) @ p["mlm_dense"]["kernel"] + p["mlm_dense"]["bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    h = _layernorm(h, p["mlm_norm"]["scale"], p["mlm_norm"]["bias"], 1e-12)
    ref = h @ p["token_embed"]["embedding"].T + p["mlm_bias"]
    np.testing.assert_allclose(out["mlm_logits"], ref, rtol=1e-4, atol=1e-4)
    pooled = np.tanh(np.asarray(out["hidden"])[:, 0] @ p["pooler"]["kernel"] + p["pooler"]["bias"])
    np.testing.assert_allclose(out["pooled"], pooled, rtol=1e-5, atol=1e-5)


def test_roberta_preset_and_validation(bert_setup):
    _, _, tok, _ = bert_setup
    model = bert.bert("roberta_base", VOCAB, hidden_dim=32, num_layers=1, num_heads=2,
                      mlp_dim=64, max_len=16)
    params = jax.eval_shape(model.init, jax.random.key(0), tok)["params"]
    assert "segment_embed" not in params and "nsp" not in params
    assert "nsp_logits" not in jax.eval_shape(model.apply, {"params": params}, tok)
    with pytest.raises(ValueError, match="segment_ids"):
        jax.eval_shape(model.apply, {"params": params}, tok, jnp.zeros_like(tok))
    with pytest.raises(ValueError, match="max_len"):
        jax.eval_shape(model.apply, {"params": params}, _tokens(3, (1, 20)))
    with pytest.raises(ValueError, match="preset"):
        bert.bert("large", VOCAB)
    assert bert.PRESETS["base"]["hidden_dim"] == 768 and bert.PRESETS["base"]["max_len"] == 512


# ----------------------------------------------------------------------------- GPT
@pytest.fixture(scope="module")
def gpt_setup():
    model = gpt.gpt("tiny")
    params = _init(model, _tokens(0, (2, 8), 64))
    return model, params, _fwd(model)


def test_gpt_bf16_grads():
    model = gpt.gpt("tiny", dtype=jnp.bfloat16, dropout_rate=0.1)
    tok = _tokens(4, (2, 8), 64)
    params = jax.eval_shape(model.init, jax.random.key(0), tok)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    params = _jit(model.init)(jax.random.key(0), tok)["params"]

    def loss(p):
        lg = model.apply({"params": p}, tok, deterministic=False,
                         rngs={"dropout": jax.random.key(1)})
        assert lg.shape == (2, 8, 64) and lg.dtype == jnp.float32
        return -jnp.take_along_axis(jax.nn.log_softmax(lg), tok[..., None], -1).mean()

    _finite_grads(loss, params)


def test_gpt_causality_and_tied_head(gpt_setup):
    model, params, fwd = gpt_setup
    tok = _tokens(5, (2, 8), 64)
    t = 4
    tok2 = tok.at[:, t + 1:].set((tok[:, t + 1:] + 11) % 64)
    a = fwd({"params": params}, tok)
    b = fwd({"params": params}, tok2)
    np.testing.assert_array_equal(a[:, :t + 1], b[:, :t + 1])
    assert not np.allclose(a[:, t + 1:], b[:, t + 1:])
    _, inter = fwd({"params": params}, tok, capture_intermediates=True)
    hidden = np.asarray(inter["intermediates"]["decoder"]["__call__"][0])
    ref = hidden @ np.asarray(params["token_embed"]["embedding"]).T
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-5)


def test_gpt_generate(gpt_setup):
    model, params, fwd = gpt_setup
    gen = _jit(model.generate, static_argnames=("max_new_tokens", "top_k"))
    prompt = _tokens(6, (2, 3), 64)
    key = jax.random.key(7)
    s1 = gen(params, prompt, key, max_new_tokens=5, temperature=1.0)
    s2 = gen(params, prompt, key, max_new_tokens=5, temperature=1.0)
    s3 = gen(params, prompt, jax.random.key(8), max_new_tokens=5, temperature=1.0)
    assert s1.shape == (2, 8)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1[:, :3], prompt)
    assert not np.array_equal(s1, s3)
    # greedy reference: repeated forward calls + argmax of the last written position
    seq = np.zeros((2, 8), np.int32)
    seq[:, :3] = prompt
    for t in range(3, 8):  # fixed-length buffer: causality makes the zero tail irrelevant
        logits = fwd({"params": params}, jnp.asarray(seq))
        seq[:, t] = np.argmax(logits[:, t - 1], -1)
    greedy = gen(params, prompt, key, max_new_tokens=5, temperature=0.0)
    np.testing.assert_array_equal(greedy, seq)
    top1 = gen(params, prompt, key, max_new_tokens=5, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, seq)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(params, prompt, key, max_new_tokens=64)


# ----------------------------------------------------------------------------- T5
def _np_relative_position_bucket(rel, bidirectional, num_buckets, max_distance):
    """Scalar transcription of mesh_tensorflow/T5 `_relative_position_bucket`."""
    out = np.zeros_like(rel)
    for idx, r in np.ndenumerate(rel):
        ret, n, nb = 0, -int(r), num_buckets
        if bidirectional:
            nb //= 2
            if n < 0:
                ret += nb
            n = abs(n)
        else:
            n = max(n, 0)
        max_exact = nb // 2
        if n < max_exact:
            ret += n
        else:
            large = max_exact + int(math.log(n / max_exact + np.finfo(np.float32).eps)
                                    / math.log(max_distance / max_exact) * (nb - max_exact))
            ret += min(large, nb - 1)
        out[idx] = ret
    return out


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_relative_position_bucket(bidirectional):
    rel = np.arange(-300, 301)[None, :] + np.array([[0], [3]])
    got = t5.relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128)
    ref = _np_relative_position_bucket(rel, bidirectional, 32, 128)
    np.testing.assert_array_equal(got, ref)
    assert int(got.max()) == 31 and int(got.min()) == 0


def test_t5_shift_right():
    np.testing.assert_array_equal(t5.shift_right(jnp.array([[5, 6, 7]]), 1), [[1, 5, 6]])


def test_t5_shapes_grads_causality_padding():
    model = t5.t5("tiny")
    enc, dec = _tokens(8, (2, 7), 64), _tokens(9, (2, 5), 64)
    params = _init(model, enc, dec)
    fwd = _fwd(model)
    assert "lm_head" in params
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert not any("bias" in jax.tree_util.keystr(k)
                   for k, _ in jax.tree_util.tree_leaves_with_path(params)
                   if "rel_bias" not in jax.tree_util.keystr(k))
    logits = fwd({"params": params}, enc, dec)
    assert logits.shape == (2, 5, 64) and logits.dtype == jnp.float32
    dec2 = dec.at[:, 3:].set((dec[:, 3:] + 5) % 64)
    b = fwd({"params": params}, enc, dec2)
    np.testing.assert_array_equal(logits[:, :3], b[:, :3])
    assert not np.allclose(logits[:, 3:], b[:, 3:])
    # encoder padding: changing padded source tokens leaves the logits unchanged
    valid = jnp.array([[True] * 4 + [False] * 3, [True] * 7])
    enc2 = enc.at[0, 4:].set((enc[0, 4:] + 3) % 64)
    c = fwd({"params": params}, enc, dec, valid)
    d = fwd({"params": params}, enc2, dec, valid)
    np.testing.assert_array_equal(c, d)

    def loss(p):
        lg = model.apply({"params": p}, enc, dec, deterministic=False,
                         rngs={"dropout": jax.random.key(1)})
        return -jnp.take_along_axis(jax.nn.log_softmax(lg), dec[..., None], -1).mean()

    _finite_grads(loss, params)


def test_t5_tied_head_bf16_and_presets():
    model = t5.t5("tiny", tie_embeddings=True)
    enc, dec = _tokens(10, (2, 7), 64), _tokens(11, (2, 5), 64)
    params = _init(model, enc, dec)
    assert "lm_head" not in params
    fwd = _fwd(model)
    encoded = fwd({"params": params}, enc, method="encode")
    _, inter = fwd({"params": params}, encoded, dec, method="decode",
                   capture_intermediates=True)
    hidden = np.asarray(inter["intermediates"]["decoder"]["__call__"][0])
    logits = fwd({"params": params}, enc, dec)
    ref = (hidden * 32 ** -0.5) @ np.asarray(params["embed"]["embedding"]).T
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    bf = t5.t5("tiny", tie_embeddings=True, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(bf.init, jax.random.key(0), enc, dec)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    out = jax.eval_shape(bf.apply, {"params": params}, enc, dec)
    assert out.shape == (2, 5, 64) and out.dtype == jnp.float32
    enc_out = jax.eval_shape(lambda p: bf.apply({"params": p}, enc, method="encode"), params)
    assert enc_out.dtype == jnp.bfloat16
    small = t5.PRESETS["t5_small"]
    assert (small["d_model"], small["num_encoder_layers"], small["num_heads"],
            small["d_ff"]) == (512, 6, 8, 2048)
    with pytest.raises(ValueError, match="preset"):
        t5.t5("t5_xxl")


def test_text_attention_head_major_equals_the_einsum_forms(monkeypatch):
    """jssl.models.head_major's products in MultiHeadAttention (on by default on CPU):
    output and every gradient equal the einsum forms', with a mask, a bias and cross-attention
    lengths differing from the query length."""
    from jssl.models import head_major
    from jssl.models.transformer import BlockConfig, MultiHeadAttention

    cfg = BlockConfig(dim=16, num_heads=4, mlp_dim=32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 7, 16)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 5, 7)) > 0.3).at[..., 0].set(True)
    bias = jnp.asarray(rng.standard_normal((1, 4, 5, 7)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
    module = MultiHeadAttention(cfg)
    params = module.init(jax.random.key(0), x, ctx, mask, bias)

    def run():
        def f(p, x):
            return jnp.vdot(module.apply(p, x, ctx, mask, bias), g)
        return f(params, x), jax.grad(f, argnums=(0, 1))(params, x)

    assert head_major.enabled()  # the tests run on CPU
    value, grads = run()
    monkeypatch.setattr(head_major, "ENABLED", False)
    want_value, want_grads = run()
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-5 * float(jnp.abs(b).max()))
