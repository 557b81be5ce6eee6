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
        ("clip", 512, "cudnn"), ("mae", 1024, "xla")]
    assert gpu_mfu.parse_cases(_args(only="mae", batch="256,1024", attention="xla")) == [
        ("mae", 256, "xla"), ("mae", 1024, "xla")]


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
