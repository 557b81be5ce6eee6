"""bench/gpu_mfu.py on CPU: its case list and its analytic FLOP count (the MFU numerator)."""
import argparse
import sys
from pathlib import Path

import jax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_mfu  # noqa: E402


def _args(**kw) -> argparse.Namespace:
    base = {"cases": "", "only": "mae,clip", "batch": "256", "attention": "xla,cudnn"}
    return argparse.Namespace(**{**base, **kw})


def test_cases_keep_their_order_and_default_to_the_product():
    assert gpu_mfu.parse_cases(_args(cases="clip:512:cudnn,mae:1024:xla")) == [
        ("clip", 512, "cudnn", ""), ("mae", 1024, "xla", "")]
    assert gpu_mfu.parse_cases(_args(only="mae", batch="256,1024", attention="xla")) == [
        ("mae", 256, "xla", ""), ("mae", 1024, "xla", "")]
    # a case's own switches: names in jssl.models.vit unless dotted, joined by "+"
    assert gpu_mfu.parse_cases(_args(
        cases="mae:1024:cudnn:PAD_SEQUENCE_ONCE=True+jssl.models.dense.DIRECT_KERNEL_GRAD=0"
    )) == [("mae", 1024, "cudnn", "jssl.models.vit.PAD_SEQUENCE_ONCE=True,"
            "jssl.models.dense.DIRECT_KERNEL_GRAD=0")]


@pytest.mark.parametrize("bad", ["mae:1024", "dino:256:xla", "mae:big:xla", "mae:256:flash"])
def test_a_bad_case_names_the_flag_and_the_form(bad):
    with pytest.raises(SystemExit, match=r"--cases=.*method:batch:attention"):
        gpu_mfu.parse_cases(_args(cases=f"clip:512:xla,{bad}"))


def test_analytic_flops_match_xla_cost_analysis_of_the_mae_update():
    """MFU's numerator (vit_flops: 3 × the forward matmul FLOPs) against XLA:CPU's own count
    of the compiled ViT-B/16 MAE update (forward, backward, AdamW) at batch 2: XLA also
    counts the elementwise work, so it may be a few percent higher, never lower by much."""
    config, state, step, data = gpu_mfu.build_case("mae", 2, "xla", devices=jax.devices()[:1])
    inputs = step.prepare(state.rng, state.step, data)
    xla = gpu_mfu._flops_of(step.update.lower(state, inputs).compile())
    model = 2 * gpu_mfu.vit_flops("mae", config)
    assert model / xla == pytest.approx(1.0, abs=0.05), (model, xla)


def test_apply_sets_sets_switches_and_names_bad_ones():
    """``--set`` sets module-level A/B switches from Python literals; a bad one fails with a
    line naming it."""
    from jssl.models import vit as vit_mod

    old = vit_mod.CUDNN_SEQ_MULTIPLE, vit_mod.PATCH_EMBED_MATMUL
    try:
        done = gpu_mfu.apply_sets("jssl.models.vit.CUDNN_SEQ_MULTIPLE=8,"
                                  "jssl.models.vit.PATCH_EMBED_MATMUL=True")
        assert done == {"jssl.models.vit.CUDNN_SEQ_MULTIPLE": 8,
                        "jssl.models.vit.PATCH_EMBED_MATMUL": True}
        assert vit_mod.CUDNN_SEQ_MULTIPLE == 8 and vit_mod.PATCH_EMBED_MATMUL is True
        assert gpu_mfu._current("jssl.models.vit.CUDNN_SEQ_MULTIPLE=3") == (
            "jssl.models.vit.CUDNN_SEQ_MULTIPLE=8")  # what puts the switch back
        with pytest.raises(SystemExit, match="has no NOPE"):
            gpu_mfu.apply_sets("jssl.models.vit.NOPE=1")
        with pytest.raises(SystemExit, match="expected module.NAME=literal"):
            gpu_mfu.apply_sets("jssl.models.vit.CUDNN_SEQ_MULTIPLE=eight")
    finally:
        vit_mod.CUDNN_SEQ_MULTIPLE, vit_mod.PATCH_EMBED_MATMUL = old
