"""Tests for wav2vec 2.0: frame arithmetic, Gumbel product quantizer, masking, jit grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models import wav2vec2 as w2v

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("models_wav2vec2")

SAMPLES = 1000  # tiny conv stack: 49 frames
# Tests check values, not speed: unoptimised XLA code compiles ~3x faster on CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _frames_closed_form(samples, receptive_field, hop):
    """Stacked VALID convs: frame j covers [j·hop, j·hop + receptive_field)."""
    return (samples - receptive_field) // hop + 1


@pytest.mark.parametrize("samples", [400, 719, 720, 1039, 16000, 16320, 250000])
def test_num_frames_base(samples):
    # base: receptive field 400 samples (25 ms), hop 320 (20 ms)
    assert w2v.num_frames(samples) == _frames_closed_form(samples, 400, 320)


def test_num_frames_tiny_matches_model_and_errors():
    for samples in (40, 59, 60, 999, SAMPLES):
        assert w2v.num_frames(samples, w2v.TINY_CONV) == _frames_closed_form(samples, 40, 20)
    assert w2v.num_frames(16000) == 49
    enc = w2v.FeatureEncoder(w2v.TINY_CONV)
    wav = jnp.ones((1, 777))
    out = jax.eval_shape(lambda x: enc.apply(enc.init(jax.random.key(0), x), x), wav)
    assert out.shape == (1, w2v.num_frames(777, w2v.TINY_CONV), 32)
    with pytest.raises(ValueError, match="num_samples=300"):
        w2v.num_frames(300)


def test_grad_multiply():
    x, y = jnp.arange(3.0), jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(w2v.grad_multiply(x, 0.1), x)
    g = jax.grad(lambda a: jnp.sum(w2v.grad_multiply(a, 0.1) * y))(x)
    np.testing.assert_allclose(g, 0.1 * y, rtol=1e-6)


# ----------------------------------------------------------------------------- quantizer
G, V, D = 2, 16, 16


@pytest.fixture(scope="module")
def quantizer():
    q = w2v.GumbelQuantizer(G, V, D)
    x = jax.random.normal(jax.random.key(0), (3, 20, 24))
    params = q.init(jax.random.key(1), x, 2.0)["params"]
    return q, params, x


def _run(q, params, x, temperature, train, weights=None, key=3):
    return q.apply({"params": params}, x, temperature, weights, not train,
                   rngs={"gumbel": jax.random.key(key)})


def test_quantized_are_codebook_rows_and_perplexity(quantizer):
    q, params, x = quantizer
    book = np.asarray(params["codevectors"])
    weights = jax.random.bernoulli(jax.random.key(4), 0.4, x.shape[:2])
    logits = (np.asarray(x) @ np.asarray(params["weight_proj"]["kernel"])
              + np.asarray(params["weight_proj"]["bias"])).reshape(3, 20, G, V)
    for train in (False, True):
        out = _run(q, params, x, 1.0, train, weights)
        codes = np.asarray(out["codes"])
        ref = np.concatenate([book[g][codes[..., g]] for g in range(G)], axis=-1)
        np.testing.assert_array_equal(out["quantized"], ref)
    eval_codes = np.asarray(_run(q, params, x, 1.0, False)["codes"])
    np.testing.assert_array_equal(eval_codes, logits.argmax(-1))
    # NumPy perplexities over the weighted (masked) frames, summed over groups
    wn = np.asarray(weights, np.float64).reshape(-1)
    onehot = np.eye(V)[logits.argmax(-1)].reshape(-1, G, V)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft = (soft / soft.sum(-1, keepdims=True)).reshape(-1, G, V)

    def ppl(p):
        avg = (p * wn[:, None, None]).sum(0) / wn.sum()
        return np.exp(-(avg * np.log(avg + 1e-7)).sum(-1)).sum()

    out = _run(q, params, x, 1.0, True, weights)
    np.testing.assert_allclose(out["code_perplexity"], ppl(onehot), rtol=1e-5)
    np.testing.assert_allclose(out["prob_perplexity"], ppl(soft), rtol=1e-4)
    assert 1.0 <= float(out["code_perplexity"]) <= G * V
    np.testing.assert_allclose(out["probs"].reshape(-1, G, V), soft, rtol=1e-4, atol=1e-6)


def test_lower_temperature_sharpens(quantizer):
    q, params, x = quantizer

    def entropy(p):
        return float(-(p * jnp.log(p + 1e-12)).sum(-1).mean())

    for train in (False, True):
        ents = [entropy(_run(q, params, x, t, train)["gumbel_probs"]) for t in (2.0, 1.0, 0.5)]
        assert ents[0] > ents[1] > ents[2], ents
    with pytest.raises(ValueError, match="temperature"):
        _run(q, params, x, 0.0, False)


def test_straight_through_gradient(quantizer):
    q, params, x = quantizer
    target = jax.random.normal(jax.random.key(5), (3, 20, D))

    def loss(p):
        return jnp.sum(_run(q, p, x, 0.7, True)["quantized"] * target)

    grads = jax.grad(loss)(params)
    assert float(jnp.abs(grads["weight_proj"]["kernel"]).sum()) > 0
    codes = np.asarray(_run(q, params, x, 0.7, True)["codes"])
    used = np.zeros((G, V), bool)
    for g in range(G):
        used[g, np.unique(codes[..., g])] = True
    gbook = np.abs(np.asarray(grads["codevectors"])).sum(-1)
    assert (gbook[used] > 0).all() and (gbook[~used] == 0).all()
    eval_grads = jax.grad(lambda p: jnp.sum(_run(q, p, x, 0.7, False)["quantized"] * target))(
        params)
    assert float(jnp.abs(eval_grads["weight_proj"]["kernel"]).sum()) == 0.0


# ----------------------------------------------------------------------------- full model
@pytest.fixture(scope="module")
def tiny_model():
    model = w2v.wav2vec2("tiny")
    frames = model.frames(SAMPLES)
    wav = jax.random.normal(jax.random.key(0), (2, SAMPLES))
    mask = jax.random.bernoulli(jax.random.key(1), 0.5, (2, frames))
    params = model.init(jax.random.key(2), wav, mask, 2.0)["params"]
    return model, params, wav, mask


def test_masked_frames_are_mask_embedding(tiny_model):
    model, params, wav, mask = tiny_model
    out, state = model.apply({"params": params}, wav, mask, 2.0, mutable=["intermediates"])
    x = np.asarray(state["intermediates"]["transformer_input"][0])
    m = np.asarray(mask)
    emb = np.asarray(params["mask_embedding"])
    np.testing.assert_array_equal(x[m], np.broadcast_to(emb, (m.sum(), emb.size)))
    assert not np.isclose(x[~m], emb).all(-1).any()
    frames = w2v.num_frames(SAMPLES, w2v.TINY_CONV)
    assert out["context"].shape == (2, frames, 16) and out["quantized"].shape == (2, frames, 16)
    assert out["probs"].shape == (2, frames, G, V) and out["codes"].shape == (2, frames, G)
    _, inter = model.apply({"params": params}, wav, mask, 2.0, capture_intermediates=True)
    feats = np.asarray(inter["intermediates"]["feature_encoder"]["__call__"][0])
    np.testing.assert_allclose(out["features_penalty"], np.mean(feats ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="mask shape"):
        model.apply({"params": params}, wav, mask[:, :-1], 2.0)


def test_jit_forward_backward(tiny_model):
    model, params, wav, mask = tiny_model

    def loss(p, temperature):
        out = model.apply({"params": p}, wav, mask, temperature, train=True,
                          rngs={"dropout": jax.random.key(3), "gumbel": jax.random.key(4)})
        sim = jnp.sum(out["context"] * out["quantized"], -1)
        diversity = (G * V - out["prob_perplexity"]) / (G * V)
        return jnp.mean(sim * mask) + 0.1 * diversity + 10 * out["features_penalty"]

    value, grads = jax.jit(jax.value_and_grad(loss), compiler_options=FAST_COMPILE)(params, 1.5)
    assert np.isfinite(float(value))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
    for name in ("feature_encoder", "quantizer", "encoder", "pos_conv", "mask_embedding"):
        total = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[name]))
        assert total > 0, name


def test_bfloat16_shapes_and_presets(tiny_model):
    _, params, wav, mask = tiny_model
    model = w2v.wav2vec2("tiny", dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.key(0), wav, mask, 1.0)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    out = jax.eval_shape(lambda p: model.apply(
        {"params": p}, wav, mask, 1.0, train=True,
        rngs={"dropout": jax.random.key(0), "gumbel": jax.random.key(1)}), params)
    assert out["context"].dtype == jnp.bfloat16 and out["hidden"].dtype == jnp.bfloat16
    assert out["quantized"].dtype == jnp.bfloat16 and out["probs"].dtype == jnp.float32
    assert out["context"].shape == (2, w2v.num_frames(SAMPLES, w2v.TINY_CONV), 16)
    base = w2v.PRESETS["base"]
    assert (base["dim"], base["num_layers"], base["num_heads"], base["final_dim"],
            base["num_codevectors"]) == (768, 12, 12, 256, 320)
    assert int(np.prod([s for _, _, s in base["conv_layers"]])) == 320
    with pytest.raises(ValueError, match="preset"):
        w2v.wav2vec2("huge")
    with pytest.raises(ValueError, match="overrides"):
        w2v.wav2vec2("tiny", hidden=3)


def test_positional_conv_matches_numpy():
    from math import erf

    mod = w2v.PositionalConv(dim=8, kernel=4, groups=2)
    x = jax.random.normal(jax.random.key(0), (1, 6, 8))
    params = mod.init(jax.random.key(1), x)["params"]
    out = np.asarray(mod.apply({"params": params}, x))
    v = np.asarray(params["conv"]["kernel"], np.float64)  # [K, in/groups, out]
    scale = np.asarray(params["weight_norm"]["conv/kernel/scale"], np.float64)
    np.testing.assert_allclose(scale, np.sqrt(4 * 4 / 4), rtol=1e-6)  # fairseq gain init
    w = v / np.sqrt((v ** 2).sum(axis=(1, 2), keepdims=True)) * scale[:, None, None]
    xp = np.pad(np.asarray(x[0], np.float64), ((2, 2), (0, 0)))
    ref = np.zeros((6, 8))
    for t in range(6):  # output frames 0..6 exist; the 7th (last) is dropped
        for o in range(8):
            grp = o // 4
            ref[t, o] = (xp[t:t + 4, grp * 4:(grp + 1) * 4] * w[:, :, o]).sum()
    ref += np.asarray(params["conv"]["bias"])
    ref = 0.5 * ref * (1 + np.vectorize(erf)(ref / np.sqrt(2)))
    np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-5)
