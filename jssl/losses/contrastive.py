"""Contrastive losses with negatives: InfoNCE, NT-Xent (SimCLR) and MoCo.

Two modes, same value and gradient (tested on 1, 2, 4 and 8 devices):

* ``axis_name=None``: global arrays, under ``jax.jit`` on one device or
  GSPMD-sharded.
* ``axis_name="data"`` (or a tuple of mesh axes) inside ``jax.shard_map``: each
  device holds its shard of the batch. Keys are all-gathered across the axis
  (gradients flow back through the gather's transpose, a reduce-scatter), each
  device scores only its *local* anchors against the gathered keys, with labels
  offset by its index (the "local loss" pattern), and the per-anchor losses are
  summed with ``psum`` and divided by the global number of anchors. The result is
  the global-batch loss, replicated on every device.

Similarities are cosine similarities computed in float32 at HIGHEST precision,
whatever the input dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import (
    AxisName,
    axis_index,
    axis_size,
    check_dim,
    check_impl,
    check_ndim,
    check_positive,
    check_same_shape,
    gather,
    gather_replicated,
    global_mean,
    l2_normalize,
    matmul_t,
)
from jssl.losses.ring import nt_xent_ring

_T_FIX = "pass a positive temperature such as 0.1"


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-row softmax cross-entropy: logsumexp(logits) - logits[label]."""
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def info_nce(
    query: jax.Array,
    positive: jax.Array,
    negatives: jax.Array,
    temperature: float = 0.07,
    *,
    axis_name: AxisName = None,
) -> jax.Array:
    """InfoNCE with explicit negatives (van den Oord et al. 2018, "CPC").

    For each query q_i with positive p_i and negatives n_i1..n_iK:

        l_i = -log exp(s(q_i, p_i)/T) / (exp(s(q_i, p_i)/T) + sum_k exp(s(q_i, n_ik)/T))

    with s the cosine similarity. The positive sits at index 0 of the logits.
    Reduction: mean of l_i over the (global) batch.

    Args:
      query: [B, D].
      positive: [B, D].
      negatives: [B, K, D], the K negatives of each query.
      temperature: T > 0.
      axis_name: mesh axis when called inside ``shard_map`` (batch-sharded inputs).
    """
    check_ndim("query", query, 2, "[batch, dim]")
    check_same_shape("query", query, "positive", positive)
    check_ndim("negatives", negatives, 3, "[batch, num_negatives, dim]")
    check_dim("negatives", negatives, 0, query.shape[0], "the batch size of query")
    check_dim("negatives", negatives, 2, query.shape[1], "the embedding dim of query")
    check_positive("temperature", temperature, _T_FIX)
    q, p, n = l2_normalize(query), l2_normalize(positive), l2_normalize(negatives)
    pos = jnp.sum(q * p, axis=-1, keepdims=True)
    neg = jnp.einsum("bd,bkd->bk", q, n, precision=jax.lax.Precision.HIGHEST)
    logits = jnp.concatenate([pos, neg], axis=-1) / temperature
    losses = jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]
    return global_mean(jnp.sum(losses), query.shape[0], axis_name)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float = 0.1,
    *,
    axis_name: AxisName = None,
    impl: str = "gather",
    block_size: int = 1024,
) -> jax.Array:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020).

    The 2N embeddings {z1_i} ∪ {z2_i} are L2-normalised; each one is an anchor
    whose positive is its partner view and whose negatives are the other 2N − 2
    embeddings (itself excluded from the softmax):

        l(a) = -log exp(sim(a, a⁺)/T) / sum_{b ≠ a} exp(sim(a, b)/T)

    Reduction: mean over all 2N anchors of the global batch.

    ``impl="gather"``: under ``shard_map`` both views are gathered (N·D each); a
    device's logits are its 2n local anchors against the 2N gathered keys, i.e.
    [2n, 2N] floats. ``impl="ring"``: the key blocks travel around the axis with
    ``ppermute`` and are scored in ``block_size`` tiles with a running
    log-sum-exp and a recomputing custom VJP (``jssl.losses.ring``): O(n·D)
    memory per device, same value and gradient.

    Args:
      z1, z2: [B, D] the two views' projections (any float dtype).
      temperature: T > 0 (a Python float for ``impl="ring"``).
      axis_name: mesh axis when called inside ``shard_map``.
      impl: "gather" (all-gather + local loss) or "ring".
      block_size: tile edge for ``impl="ring"``.
    """
    check_ndim("z1", z1, 2, "[batch, dim]")
    check_same_shape("z1", z1, "z2", z2)
    check_positive("temperature", temperature, _T_FIX)
    check_impl(impl, block_size)
    n = z1.shape[0]
    a1, a2 = l2_normalize(z1), l2_normalize(z2)
    if impl == "ring":
        if not isinstance(temperature, float | int):
            raise ValueError(f"temperature must be a Python float with impl='ring', got "
                             f"{type(temperature).__name__}; pass e.g. temperature=0.1")
        local = nt_xent_ring(a1, a2, float(temperature), axis_name, block_size)
        return global_mean(local, 2 * n, axis_name)
    k1, k2 = gather(a1, axis_name), gather(a2, axis_name)
    big_n = k1.shape[0]
    anchors = jnp.concatenate([a1, a2], axis=0)  # [2n, D]
    keys = jnp.concatenate([k1, k2], axis=0)  # [2N, D]
    logits = matmul_t(anchors, keys) / temperature  # [2n, 2N]
    local = axis_index(axis_name) * n + jnp.arange(n)  # global rows of my anchors in k1
    self_idx = jnp.concatenate([local, big_n + local])
    pos_idx = jnp.concatenate([big_n + local, local])
    self_mask = jnp.arange(2 * big_n)[None, :] == self_idx[:, None]
    logits = jnp.where(self_mask, -jnp.inf, logits)
    losses = _cross_entropy(logits, pos_idx)
    return global_mean(jnp.sum(losses), 2 * n, axis_name)


def moco(
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    temperature: float = 0.2,
    *,
    axis_name: AxisName = None,
) -> jax.Array:
    """MoCo contrastive loss (He et al. 2020; v2: Chen et al. 2020).

    Queries q_i (online encoder) are scored against their key k_i (momentum
    encoder) and the K queued keys of earlier batches:

        l_i = -log exp(q_i·k_i/T) / (exp(q_i·k_i/T) + sum_j exp(q_i·queue_j/T))

    q and k are L2-normalised here; the queue is expected normalised (as
    ``moco_update_queue`` stores it) and is normalised again (idempotent). No
    gradient flows into k or the queue (stop-gradient). Reduction: mean over the
    global batch of queries. Under ``shard_map`` the queue is replicated and
    positives are local, so the only collective is the final ``psum``.

    Args:
      q: [B, D] queries. k: [B, D] keys. queue: [K, D] negatives.
      temperature: T > 0 (0.07 in v1, 0.2 in v2).
    """
    check_ndim("q", q, 2, "[batch, dim]")
    check_same_shape("q", q, "k", k)
    check_ndim("queue", queue, 2, "[queue_size, dim]")
    check_dim("queue", queue, 1, q.shape[1], "the embedding dim of q")
    check_positive("temperature", temperature, _T_FIX)
    qn = l2_normalize(q)
    kn = jax.lax.stop_gradient(l2_normalize(k))
    neg_keys = jax.lax.stop_gradient(l2_normalize(queue))
    pos = jnp.sum(qn * kn, axis=-1, keepdims=True)
    logits = jnp.concatenate([pos, matmul_t(qn, neg_keys)], axis=-1) / temperature
    losses = jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]
    return global_mean(jnp.sum(losses), q.shape[0], axis_name)


def moco_update_queue(queue: jax.Array, k: jax.Array, *, axis_name: AxisName = None) -> jax.Array:
    """Enqueue this step's keys from every device and drop the oldest.

    The new queue is ``concat([K_global, queue])[:queue_size]`` where ``K_global``
    holds the L2-normalised keys of the whole global batch in global batch order
    (device 0's rows first). Row 0 is therefore the newest key. Equivalent to
    MoCo's pointer-based ring buffer up to a rotation of the rows, which the loss
    does not see. No gradient flows (keys are stop-gradient). Under
    ``shard_map`` every device computes the same replicated queue.

    Args:
      queue: [K, D] current queue (replicated).
      k: [B, D] this device's keys (global batch B·P must be ≤ K).
    """
    check_ndim("queue", queue, 2, "[queue_size, dim]")
    check_ndim("k", k, 2, "[batch, dim]")
    check_dim("k", k, 1, queue.shape[1], "the embedding dim of the queue")
    global_b = k.shape[0] * axis_size(axis_name)
    if global_b > queue.shape[0]:
        raise ValueError(
            f"queue has {queue.shape[0]} rows but the global batch of keys k has {global_b}; "
            f"use a queue_size ≥ the global batch"
        )
    keys = gather_replicated(jax.lax.stop_gradient(l2_normalize(k)), axis_name)
    keys = keys.astype(queue.dtype)
    return jnp.concatenate([keys, queue[: queue.shape[0] - global_b]], axis=0)
