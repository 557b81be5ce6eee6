"""The exact GELU written with erf, the form PyTorch and the papers use.

    gelu(x) = x · Φ(x) = ½ x (1 + erf(x / √2))

``jax.nn.gelu(x, approximate=False)`` computes the same function as ½ x erfc(−x / √2).
XLA:CPU expands ``erfc`` into an exponential, two rational approximations and selects, and
``erf`` into one clamped rational approximation: on a 2-core Intel Xeon (AVX-512) the erf
form's forward took 0.59 of the erfc form's time, and the MAE and BERT CPU updates 0.94 and
0.96 (``bench/gelu.py``, docs/performance.md). The two agree to ~1e-6 absolute in float32
(a test compares values and gradients); they differ in *relative* terms only in the far
negative tail (x < −4), where gelu(x) is below 1e-4 and 1 + erf(x/√2) loses digits to
cancellation, as PyTorch's does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, elementwise, in ``x``'s dtype."""
    x = jnp.asarray(x)
    half = jnp.asarray(0.5, x.dtype)
    return half * x * (1 + jax.lax.erf(x * jnp.asarray(np.sqrt(0.5), x.dtype)))
