"""CLIP and SigLIP on Fashion-MNIST captions: the caption table, zero-shot and recall@k
against NumPy references, the logit-scale cap, 1-vs-8-device steps, the tiny preset end to
end."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from step_check import SMOOTH_RESNET, assert_same_update
from test_engine import _build, tiny_config  # tests/ is on sys.path

from jssl.data import captions
from jssl.evaluate.zero_shot import (
    image_text_results,
    recall_at_k,
    zero_shot_predict,
    zero_shot_weights,
)
from jssl.train.mesh import make_mesh
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("image_text")

N = 16  # the tiny presets' global batch


def _batch():
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (N, 28, 28, 1), dtype=np.uint8),
            "label": np.arange(N, dtype=np.int32) % 10}


# ------------------------------------------------------------------------------ captions
def test_captions_vocabulary_and_held_out_split():
    classes = captions.FASHION_MNIST_CLASSES
    vocab = captions.build_vocabulary(classes)
    assert vocab.itos[:4] == captions.SPECIALS and len(set(vocab.itos)) == vocab.size
    ids = vocab.encode("a photo of an ankle boot", 12)
    assert ids.dtype == np.int32 and ids.shape == (12,)
    assert ids[0] == captions.BOS and ids[7] == captions.EOS and np.all(ids[8:] == 0)
    assert vocab.decode(ids) == "a photo of an ankle boot"
    assert captions.fill("a photo of a {}", "overcoat") == "a photo of an overcoat"
    train = {c for cs in captions.class_captions(classes, captions.TRAIN_TEMPLATES) for c in cs}
    held = captions.class_captions(classes, captions.HELD_OUT_TEMPLATES)
    assert len(train) == 10 * 10 * 3 and not train & {c for cs in held for c in cs}
    table = captions.caption_table(vocab, captions.class_captions(classes,
                                                                  captions.TRAIN_TEMPLATES), 12)
    assert table.shape == (10, 30, 12)
    assert vocab.decode(table[7, 0]) == "a photo of a sneaker"
    with pytest.raises(ValueError, match=r"needs 9 tokens > max_len=5"):
        vocab.encode("a low resolution photo of a sneaker", 5)
    with pytest.raises(ValueError, match=r"config.captions.classes='mnist' is unknown"):
        captions.class_names("mnist")


def test_text_tower_pools_at_eos_whatever_the_padding():
    """Padding mask + [EOS] pooling: a caption's features depend neither on how far it is
    padded nor on the other captions of the batch."""
    from jssl.methods.image_text_base import TextEncoder

    vocab = captions.build_vocabulary(captions.FASHION_MNIST_CLASSES)
    enc = TextEncoder(vocab_size=vocab.size, max_len=12, dim=16, depth=1, num_heads=2)
    short = np.stack([vocab.encode("a photo of a bag", 8), vocab.encode("a tee", 8)])
    long = np.stack([vocab.encode("a photo of a bag", 12), vocab.encode("a tee", 12)])
    params = enc.init(jax.random.key(0), long)
    a, b = enc.apply(params, short), enc.apply(params, long)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    other = enc.apply(params, long[:1])  # and not on the other rows of the batch
    np.testing.assert_allclose(np.asarray(other[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-6)
    assert float(np.max(np.abs(np.asarray(b[0]) - np.asarray(b[1])))) > 1e-3


# ------------------------------------------------------------------- zero-shot, recall
def test_recall_at_k_equals_a_rank_based_numpy_reference():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(40, 25))
    relevant = rng.random((40, 25)) < 0.08
    relevant[:3] = False  # queries without a relevant item never count as hits
    # Reference: the best relevant item's rank = how many items score strictly higher.
    best = np.where(relevant, sim, -np.inf).max(axis=1)
    rank = np.sum(sim > best[:, None], axis=1)
    out = recall_at_k(sim, relevant, (1, 5, 25))
    for k in (1, 5, 25):
        assert out[k] == pytest.approx(np.mean(relevant.any(1) & (rank < k)), abs=1e-12)
    assert 0 < out[1] < out[5] < out[25] == pytest.approx(np.mean(relevant.any(1)))
    assert recall_at_k(np.eye(4), np.eye(4, dtype=bool), (1,)) == {1: 1.0}
    with pytest.raises(ValueError, match=r"every k must be in \[1, gallery=25\]"):
        recall_at_k(sim, relevant, (30,))


class _ToyMethod:
    """Three hand-made classes: class c's images are the constant 60·(c+1) and both towers
    map their input to the c-th axis (images by brightness, captions by their class word)."""

    class_names = (("cat", "kitten"), ("dog", "puppy"), ("car", "automobile"))

    def __init__(self):
        self.vocab = captions.build_vocabulary(self.class_names)
        self.max_len = 12
        self.mesh = make_mesh(ml_collections.ConfigDict({"mesh": {"data": -1}}),
                              devices=jax.devices()[:1])
        self.config = ml_collections.ConfigDict({"eval": {"recall_k": (1, 2)}})
        self.word_class = {self.vocab.itos.index(w): c
                           for c, names in enumerate(self.class_names)
                           for name in names for w in name.split()}

    def features(self, variables, extra, images):
        c = jnp.round(jnp.mean(images, axis=(1, 2, 3)) * 255 / 60 - 1).astype(jnp.int32)
        return jax.nn.one_hot(c, 3) + 0.1  # not normalised: zero-shot must not care

    def text_features(self, variables, tokens):
        ids = [next(self.word_class[i] for i in row if i in self.word_class) for row in tokens]
        return np.eye(3)[ids] + np.random.default_rng(0).normal(0, 0.05, (len(ids), 3))


def test_zero_shot_on_a_hand_made_three_class_set_gives_the_obvious_answer(tmp_path):
    labels = np.array([0, 1, 2, 2, 1, 0, 0], np.int32)
    images = np.broadcast_to((60 * (labels + 1)).astype(np.uint8)[:, None, None, None],
                             (7, 28, 28, 1)).copy()
    results = image_text_results(_ToyMethod(), {}, {}, images, labels, tmp_path)
    got = {r["kind"]: r["accuracy"] for r in results}
    assert got == {"zero_shot": 1.0, "recall_i2t@1": 1.0, "recall_i2t@2": 1.0,
                   "recall_t2i@1": 1.0, "recall_t2i@2": 1.0}
    assert (tmp_path / "retrievals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Prompt ensembling: the re-normalised mean of the normalised prompt embeddings. One
    # bad prompt per class would flip a single-prompt classifier; the ensemble is right.
    prompts = np.array([[[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]],
                        [[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]]])
    unit = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    mean = unit.mean(1)
    np.testing.assert_allclose(zero_shot_weights(prompts),
                               mean / np.linalg.norm(mean, axis=-1, keepdims=True), rtol=1e-12)
    x = np.array([[0.8, 0.6], [0.6, 0.8]])
    np.testing.assert_array_equal(zero_shot_predict(x, zero_shot_weights(prompts)), [0, 1])
    np.testing.assert_array_equal(zero_shot_predict(x, prompts[:, 0]), [1, 1])  # prompt 0 alone


# ------------------------------------------------------------------- the method's loss
@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """(config, state, train step, method, prepared inputs) of each tiny preset on 1 device,
    built once per module (compiling the ResNet step dominates these tests)."""
    cache = {}

    def get(name):
        if name not in cache:
            # SGD: Adam's first step is ~lr·sign(g), which turns last-bit noise in near-zero
            # gradients into lr-sized differences; the comparison is about the gradient.
            # SiLU: no ReLU kinks in the 1-vs-8 comparison (step_check).
            config = tiny_config(tmp_path_factory.mktemp(name), name,
                                 **{"optim.warmup_steps": 0, "optim.name": "sgd",
                                    "optim.base_lr": 0.5, **SMOOTH_RESNET})
            state, step, method = _build(config, jax.devices()[:1], _batch())
            inputs = jax.device_get(step.prepare(state.rng, state.step, _batch()))
            cache[name] = (config, state, step, method, inputs)
        config, state, step, method, inputs = cache[name]
        return config, jax.tree.map(jnp.copy, state), step, method, inputs  # update donates

    return get


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_logit_scale_is_capped_at_100_and_the_loss_matches_numpy(one_device, name):
    _, state, step, method, inputs = one_device(name)
    init = {"clip": math.log(1 / 0.07), "siglip": math.log(10.0)}[name]
    assert float(state.params["logit_scale"]) == pytest.approx(init, abs=1e-6)
    for row, label in zip(inputs["tokens"], _batch()["label"], strict=True):
        assert method.vocab.decode(row) in captions.class_captions(
            method.class_names, captions.TRAIN_TEMPLATES)[label]

    # log t = 6 (t ≈ 403) is clamped to t = 100 and gets no gradient: it stays at 6.
    state = state.replace(params={**state.params, "logit_scale": jnp.float32(6.0)})
    embed = jax.jit(method.embed)(state.params, state.variables, inputs)
    new, metrics = step.update(state, inputs)
    assert float(metrics["logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    assert float(new.params["logit_scale"]) == 6.0
    (x, y, _, _), _ = embed
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    logits = 100.0 * x @ y.T
    if name == "clip":
        def ce(m):
            return np.mean(np.log(np.exp(m).sum(1)) - np.diag(m))
        want = 0.5 * (ce(logits) + ce(logits.T))
    else:
        z = 2 * np.eye(N) - 1
        want = np.sum(np.log1p(np.exp(-z * (logits - 10.0)))) / N
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_one_step_is_the_same_on_1_and_8_devices(one_device, name):
    """Captions drawn on 8 devices equal those on 1 (views to float tolerance); on the same
    inputs one step gives the same params on 1 and 8 devices (global-batch negatives)."""
    config, state1, step1, _, inputs1 = one_device(name)
    p0 = jax.device_get(state1.params)
    new1, m1 = step1.update(state1, inputs1)
    state8, step8, _ = _build(config, jax.devices(), _batch())
    own8 = step8.prepare(state8.rng, state8.step, _batch())
    np.testing.assert_array_equal(jax.device_get(own8["tokens"]), inputs1["tokens"])
    np.testing.assert_allclose(jax.device_get(own8["views"]), inputs1["views"], rtol=0,
                               atol=1e-6)
    inputs8 = jax.tree.map(lambda x, y: jax.device_put(y, x.sharding), own8, inputs1)
    new8, m8 = step8.update(state8, inputs8)
    l1, l8 = float(m1["loss"]), float(m8["loss"])
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert 0.0 < l1 < 20.0
    p1, p8 = jax.device_get(new1.params), jax.device_get(new8.params)
    # Same update to float32 rounding: each leaf to 1e-5 of its own step, and 1e-6
    # absolute for leaves whose gradient is ~0 (the key biases).
    moved = assert_same_update(p0, p1, p8)
    assert max(moved) > 1e-4, moved
    assert float(p1["logit_scale"]) != float(p0["logit_scale"])  # the temperature is trained


def test_tiny_clip_preset_trains_and_evaluates_end_to_end(tmp_path):
    config = tiny_config(tmp_path, "clip")
    summary = run(config, tmp_path / "run")
    kinds = [r["kind"] for r in summary["results"]]
    assert kinds == ["zero_shot", "recall_i2t@1", "recall_i2t@5", "recall_t2i@1",
                     "recall_t2i@5"]
    values = {r["kind"]: r["accuracy"] for r in summary["results"]}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert values["recall_i2t@1"] <= values["recall_i2t@5"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["results"] == summary["results"] and saved["train_examples"] == 200
    for png in ("curves.png", "retrievals.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
    assert {"logit_scale", "pos_cos", "mean_cos"} <= set(json.loads(lines[-1]))


def test_bad_caption_config_fails_with_a_clear_line(tmp_path):
    config = tiny_config(tmp_path, "clip", **{"captions.max_len": 6})
    with pytest.raises(ValueError, match=r"tokens > max_len=6; raise config.captions.max_len"):
        _build(config, jax.devices()[:1], _batch())
