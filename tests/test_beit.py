"""BEiT and its VQ-VAE tokenizer: the tokenizer run feeds BEiT's frozen targets, blockwise
masks, mask tokens, the masked cross-entropy against NumPy, and one step on 1 vs 8 devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_engine import _build, _one_step, _prepared, assert_same_step, tiny_config

from jssl.models.vit import vit
from jssl.models.vq_tokenizer import VQTokenizer
from jssl.train.checkpoint import Checkpointer
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("beit")


def _batch(n: int = 16) -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
            "label": np.arange(n, dtype=np.int32) % 10}


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A 4-step VQ-VAE tokenizer run (experiments/vqvae.py:tiny) on tiny Fashion-MNIST."""
    tmp = tmp_path_factory.mktemp("tok")
    config = tiny_config(tmp / "data", "vqvae")
    run(config, tmp / "run", mode="train")
    return tmp


def _beit_config(tokenizer_run, **extra):
    config = tiny_config(tokenizer_run / "data", "beit", **extra)
    config.tokenizer.workdir = str(tokenizer_run / "run")
    config.optim.warmup_steps = 0
    return config


def test_beit_reads_the_tokenizer_run_and_its_ids_are_the_targets(tokenizer_run):
    config = _beit_config(tokenizer_run)
    state, step, method = _build(config, jax.devices()[:1], _batch())
    with Checkpointer(tokenizer_run / "run", async_save=False) as ckpt:
        saved = ckpt.restore().state
    saved = jax.tree.map(np.asarray, saved["params"] if isinstance(saved, dict)
                         else saved.params)
    for a, b in zip(jax.tree.leaves(saved["encoder"]), jax.tree.leaves(state.extra["tokenizer"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "tokenizer" not in state.params  # frozen: the optimizer never sees it
    inputs = step.prepare(state.rng, state.step, _batch())
    ids = method.tokenizer.apply({"params": saved["encoder"]}, np.asarray(inputs["views"]),
                                 method=VQTokenizer.encode)
    np.testing.assert_array_equal(np.asarray(method.targets(state.extra, inputs["views"])),
                                  np.asarray(ids).reshape(16, -1))


def test_beit_needs_a_trained_tokenizer(tmp_path):
    config = tiny_config(tmp_path, "beit")
    with pytest.raises(ValueError, match="config.tokenizer.workdir is unset"):
        _build(config, jax.devices()[:1], _batch())
    config.tokenizer.workdir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is not a directory; train a tokenizer"):
        _build(config, jax.devices()[:1], _batch())


def test_beit_refuses_a_tokenizer_trained_with_other_settings(tokenizer_run):
    config = _beit_config(tokenizer_run)
    config.model.tokenizer.l2_normalize = True  # same parameter shapes, other ids
    with pytest.raises(ValueError, match=r"config.model.tokenizer=.*differs from the "
                                         r"tokenizer run's"):
        _build(config, jax.devices()[:1], _batch())


def test_beit_masks_and_loss_match_numpy(tokenizer_run):
    config = _beit_config(tokenizer_run)
    state, step, method = _build(config, jax.devices()[:1], _batch())
    inputs = step.prepare(state.rng, state.step, _batch())
    mask = np.asarray(inputs["mask"])
    assert mask.shape == (16, 49)
    counts = mask.sum(1)  # BEiT's generator: at most 20 (~40 %), usually exactly 20
    assert counts.max() <= 20 and counts.mean() >= 16 and len({tuple(m) for m in mask}) > 1
    loss, (metrics, _) = method.loss(state.params, {}, state.extra, inputs, jax.random.key(0),
                                     jnp.int32(0))
    ids = np.asarray(method.targets(state.extra, inputs["views"]))
    tokens = method.encoder.apply({"params": state.params["encoder"]}, inputs["views"],
                                  mask=inputs["mask"], train=True,
                                  rngs={"dropout": jax.random.key(0)})
    logits = np.asarray(method.head.apply({"params": state.params["head"]}, tokens[:, 1:]),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (ce * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mask_fraction"]), mask.mean(), rtol=1e-6)


def test_masked_patches_carry_only_the_mask_token():
    """With every patch masked, the ViT's output no longer depends on the image."""
    model = vit("tiny", patch_size=4, pool="none")
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    every = jnp.ones((2, 49), bool)
    params = model.init(jax.random.key(2), x, mask=every)
    a = model.apply(params, x, mask=every)
    b = model.apply(params, jax.random.uniform(jax.random.key(3), x.shape), mask=every)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    c = model.apply(params, x, mask=jnp.zeros((2, 49), bool))
    assert float(jnp.max(jnp.abs(c - a))) > 1e-3


def test_one_beit_step_is_the_same_on_1_and_8_devices(tokenizer_run):
    config, batch = _beit_config(tokenizer_run, **{"optim.base_lr": 0.02}), _batch()
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, _ = _one_step(config, jax.devices(), batch, inputs=inputs1)
    own8 = _prepared(config, jax.devices(), batch)
    np.testing.assert_array_equal(own8["mask"], inputs1["mask"])
    assert_same_step(config, batch, (p1, l1), (p8, l8), zero_grad=("['key']['bias']",))
