"""The 1-vs-N step comparison accepts rounding of the step and rejects a different step."""
from __future__ import annotations

import numpy as np
import pytest
from step_check import assert_same_update


def _trees(seed=0):
    rng = np.random.default_rng(seed)
    before = {"w": rng.normal(size=(3, 3, 8)).astype(np.float32), "b": np.zeros(8, np.float32)}
    step = {"w": 5e-4 * rng.normal(size=(3, 3, 8)), "b": 1e-2 * rng.normal(size=8)}
    one = {k: (before[k] + step[k]).astype(np.float32) for k in before}
    return before, one, step


def test_rounding_of_the_step_passes_and_returns_the_step_sizes():
    before, one, step = _trees()
    # 3e-6 of each leaf's step: float32 rounding of sums over another batch split.
    eight = {k: (one[k] + 3e-6 * np.abs(step[k]).max()).astype(np.float32) for k in one}
    steps = assert_same_update(before, one, eight)
    np.testing.assert_allclose(sorted(steps), sorted(np.abs(step[k]).max() for k in ("b", "w")),
                               rtol=1e-3)


@pytest.mark.parametrize("fraction", [0.9, 1.1])
def test_a_step_off_by_ten_percent_fails(fraction):
    # A shrunk set of negatives or a per-device statistic changes the step by O(the step).
    before, one, step = _trees(1)
    eight = {k: (before[k] + fraction * step[k]).astype(np.float32) for k in one}
    with pytest.raises(AssertionError, match=r"\['(w|b)'\]"):
        assert_same_update(before, one, eight)


def test_skipped_leaves_are_not_compared():
    before, one, _ = _trees(2)
    eight = {"w": one["w"], "b": one["b"] + 1.0}
    assert len(assert_same_update(before, one, eight, skip=("['b']",))) == 1
    with pytest.raises(AssertionError):
        assert_same_update(before, one, eight)
