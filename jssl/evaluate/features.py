"""Frozen features of a whole split, computed on the mesh in fixed-size batches."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.train.mesh import batch_axes, num_batch_devices


def extract_features(method: Any, variables: Any, extra: Any, images: np.ndarray, mesh: Mesh,
                     batch_size: int = 1024, fn: str = "features") -> np.ndarray:
    """features [N, D] (float32) of uint8 or float images [N, H, W, C].

    ``fn`` names the method's function of (variables, extra, images): ``"features"`` (frozen
    representation) or ``"predict"`` (a supervised model's logits).

    The last batch is padded to the full batch size (padding rows are dropped), so
    one compiled program serves the whole split.
    """
    n_dev = num_batch_devices(mesh)
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
    data = NamedSharding(mesh, P(batch_axes(mesh)))

    @jax.jit
    def embed(variables, extra, x):
        x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        return getattr(method, fn)(variables, extra, x).astype(jnp.float32)

    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        feats = embed(variables, extra, jax.device_put(chunk, data))
        out.append(np.asarray(jax.device_get(feats))[: batch_size - pad])
    return np.concatenate(out)
