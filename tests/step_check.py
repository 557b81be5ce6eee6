"""One training step on 1 and on N devices: the same update, leaf by leaf, to float32 rounding.

    assert_same_update(params_before, params_after_1_device, params_after_8_devices)

A different batch split changes the order of float32 sums (in the convolutions' kernel
gradients, the all-gathered similarity matrix, the BatchNorm statistics), so the two updates
differ by rounding: relative to *the step itself*, not to the parameter. A parameter of 0.004
that moves by 5e-4 can differ by 1.5e-6 (3e-6 of its step, seen on CLIP's stem kernel), which
an absolute 1e-6 rejects although it is exact to float32. A wrong set of negatives, a
missing all-reduce or a per-device statistic changes the step by O(the step), so a tolerance
of 1e-5 of each leaf's own step still catches it.

ReLU makes a float32 step a *discontinuous* function of rounding: a pre-activation within
rounding of 0 can land on either side on 1 and on N devices. Measured (Intel Xeon with
AVX-512, 2026-12-03): in the tiny SimCLR step, 1 of the 32 768 pre-activations of the last
ReLU did, on 1 device only (8 devices and a float64 run agreed). The gradients downstream of
it are sums that nearly cancel (the projector's BatchNorm makes dL/dh sum to 0 over the
batch), so every encoder leaf's step moved by 1-8 %. So the tests that compare a ReLU
ResNet on 1 and N devices give it a smooth activation (``SMOOTH_RESNET``, SiLU): the sharding
under test (global negatives, global BatchNorm statistics, the gradient all-reduce) does not
depend on the activation, and rounding then stays rounding (worst leaf 0.12 of the tolerance
on that machine).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

SMOOTH_RESNET = {"model.encoder.act": "silu"}  # config overrides: see the module docstring


def assert_same_update(before, one, eight, *, rel: float = 1e-5, atol: float = 1e-6,
                       rtol: float = 1e-4, skip: Sequence[str] = ()) -> list[float]:
    """Assert ``eight`` ≈ ``one`` leaf by leaf; return each compared leaf's step size.

    For a leaf x (after the step on 1 device) with start x₀ and step size
    s = max|x − x₀|, the N-device leaf y must satisfy, elementwise,
    |y − x| ≤ max(atol, rel·s) + rtol·|x|  (``np.testing.assert_allclose``).

    ``skip``: substrings of leaf paths left out (an attention key bias, whose exact gradient
    is 0, so that its update is rounding noise that Adam scales to ±lr).
    """
    flat_one = jax.tree_util.tree_flatten_with_path(one)[0]
    assert flat_one, "empty tree"
    assert jax.tree.structure(one) == jax.tree.structure(eight) == jax.tree.structure(before)
    steps = []
    for (path, a), b, a0 in zip(flat_one, jax.tree.leaves(eight), jax.tree.leaves(before),
                                strict=True):
        name = jax.tree_util.keystr(path)
        if any(s in name for s in skip):
            continue
        a, b, a0 = (np.asarray(v, np.float64) for v in (a, b, a0))
        step = float(np.max(np.abs(a - a0))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=rtol, atol=max(atol, rel * step), err_msg=name)
        steps.append(step)
    return steps
