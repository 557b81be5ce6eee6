"""Argument checks and key handling shared by the pretext-target makers."""
from __future__ import annotations

from numbers import Integral, Real

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------- argument checks
def _check_open_unit(name: str, value, fix: str) -> None:
    if isinstance(value, Real) and not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value}; {fix}")


def _check_int(name: str, value, low: int, fix: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}; {fix}")
    return int(value)


def _check_batch_size(batch_size) -> int | None:
    if batch_size is None:
        return None
    return _check_int("batch_size", batch_size, 1, "pass None for one unbatched sample")


def _check_int_tokens(name: str, tokens: jax.Array) -> None:
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")


def _typed_key(key) -> jax.Array:
    """A typed key: legacy ``uint32`` key data is wrapped (same impl, same stream), so
    both key styles share one compiled function and give identical results."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _batched(fn, key, batch_size: int | None):
    """fn(key) for one sample, or vmapped over ``batch_size`` split keys."""
    if batch_size is None:
        return fn(key)
    return jax.vmap(fn)(jax.random.split(key, batch_size))
