"""Ring implementations of NT-Xent, CLIP and SigLIP: O(N) memory, exact gradients.

Inside ``jax.shard_map`` each device keeps its n local rows. The other tower's
blocks travel around the data axis with ``jax.lax.ppermute`` in a ``lax.scan``
of P steps (device p holds the block owned by (p + r) mod P at step r); after P
hops every travelling block is home again. No device ever holds more than two
[n, d] blocks of the other tower, and no [n, N] or [N, N] logits exist: each
visiting block is processed in [t_r, t_c] tiles by two ``fori_loop``s.

Softmax losses keep a running log-sum-exp (LSE) per row, merged with
``logaddexp``. CLIP is fused: one tile gives both the image→text row LSE (kept
at home) and the text→image column LSE (which travels with its text block).

The backward pass is a ``jax.custom_vjp`` that saves only the inputs and the
LSE vectors (O(n·d + n)) and recomputes every tile. For a tile of logits
l_ij = s·x_i·y_j, the cotangent is G_ij = g_row·exp(l_ij − lse_i) (+
g_col·exp(l_ij − lse_j) for CLIP; g·σ(l_ij) for SigLIP), giving
dX += s·G·Y (home), dY += s·Gᵀ·X (an accumulator that travels with Y and
reaches its owner after P hops), ds += Σ G ⊙ (X·Yᵀ).

With ``axis_name=None`` the same code runs with P = 1: pure in-device tiling,
which is how one accelerator handles a batch whose N×N logits would not fit.
Every loop is a ``scan``/``fori_loop``, so the program size does not grow with
P, N or the number of tiles.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jssl.losses._common import PRECISION, AxisName, as_f32, axis_index, axis_size

NEG_INF = -jnp.inf


def tile_size(n: int, block_size: int) -> int:
    """Largest divisor of n that is ≤ block_size (tiles must cover n exactly)."""
    t = max(1, min(block_size, n))
    while n % t:
        t -= 1
    return t


def _shift(tree, axis_name: AxisName):
    """Device p receives the value of device p + 1 (mod P)."""
    if axis_name is None:
        return tree
    p = axis_size(axis_name)
    return jax.lax.ppermute(tree, axis_name, perm=[(j, (j - 1) % p) for j in range(p)])


def _varying(tree, axis_name: AxisName):
    """Type replicated values as per-device (``shard_map``'s varying manual axes).

    Loop carries must keep one type, and a replicated input (the logit scale)
    used in per-device work is cast so that its cotangent is ``psum``'med on the
    way back. Axes a value already varies over are left alone.
    """
    if axis_name is None:
        return tree
    axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)

    def cast(x):
        aval = jax.typeof(x)  # JAX 0.10 keeps the varying axes in aval.mat.varying
        have = getattr(aval, "vma", None) or getattr(getattr(aval, "mat", None), "varying", ())
        missing = tuple(a for a in axes if a not in have)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree_util.tree_map(cast, tree)


def _tile_loop(x, y, tr: int, tc: int, body, carry):
    """carry = body(carry, r0, c0, x[r0:r0+tr], y[c0:c0+tc]) over every tile."""

    def col_step(ci, carry):
        c0 = ci * tc
        yc = jax.lax.dynamic_slice_in_dim(y, c0, tc)

        def row_step(ri, carry):
            r0 = ri * tr
            return body(carry, r0, c0, jax.lax.dynamic_slice_in_dim(x, r0, tr), yc)

        return jax.lax.fori_loop(0, x.shape[0] // tr, row_step, carry)

    return jax.lax.fori_loop(0, y.shape[0] // tc, col_step, carry)


def _dots(xr, yc):
    return jnp.matmul(xr, yc.T, precision=PRECISION)


def _get(v, start, size):
    return jax.lax.dynamic_slice_in_dim(v, start, size)


def _put(v, update, start):
    return jax.lax.dynamic_update_slice_in_dim(v, update, start, axis=0)


def _add(v, update, start):
    return _put(v, _get(v, start, update.shape[0]) + update, start)


def _self_mask(r0, c0, tr, tc, row_off, col_off):
    rows = row_off + r0 + jnp.arange(tr)
    cols = col_off + c0 + jnp.arange(tc)
    return rows[:, None] == cols[None, :]


# ------------------------------------------------------------------ softmax rows
# One routine serves CLIP (rows and columns, no self mask) and NT-Xent (rows only,
# self-similarities masked; anchors and keys are the same embeddings).
def _softmax_fwd_ring(x, y, scale, axis_name, block, both: bool, mask_self: bool):
    n, m = x.shape[0], y.shape[0]
    tr, tc = tile_size(n, block), tile_size(m, block)
    me = axis_index(axis_name)
    p = axis_size(axis_name)

    def ring_step(carry, r):
        row_lse, y_vis, col_lse = carry
        owner = (me + r) % p

        def body(c, r0, c0, xr, yc):
            row_lse, col_lse = c
            logits = scale * _dots(xr, yc)
            if mask_self:
                logits = jnp.where(_self_mask(r0, c0, tr, tc, me * n, owner * m), NEG_INF, logits)
            row_lse = _put(row_lse, jnp.logaddexp(_get(row_lse, r0, tr),
                                                  jax.nn.logsumexp(logits, axis=1)), r0)
            if both:
                col_lse = _put(col_lse, jnp.logaddexp(_get(col_lse, c0, tc),
                                                      jax.nn.logsumexp(logits, axis=0)), c0)
            return row_lse, col_lse

        row_lse, col_lse = _tile_loop(x, y_vis, tr, tc, body, (row_lse, col_lse))
        y_vis, col_lse = _shift((y_vis, col_lse), axis_name)
        return (row_lse, y_vis, col_lse), None

    init = (_varying(jnp.full((n,), NEG_INF), axis_name), y,
            _varying(jnp.full((m,), NEG_INF), axis_name))
    (row_lse, _, col_lse), _ = jax.lax.scan(ring_step, init, jnp.arange(p))
    return row_lse, col_lse


def _softmax_bwd_ring(x, y, scale, row_lse, col_lse, g, axis_name, block, both, mask_self):
    n, m = x.shape[0], y.shape[0]
    tr, tc = tile_size(n, block), tile_size(m, block)
    me = axis_index(axis_name)
    p = axis_size(axis_name)

    def ring_step(carry, r):
        dx, ds, y_vis, col_lse_vis, g_vis, dy_vis = carry
        owner = (me + r) % p

        def body(c, r0, c0, xr, yc):
            dx, ds, dy_vis = c
            dots = _dots(xr, yc)
            logits = scale * dots
            if mask_self:
                logits = jnp.where(_self_mask(r0, c0, tr, tc, me * n, owner * m), NEG_INF, logits)
            grad = g * jnp.exp(logits - _get(row_lse, r0, tr)[:, None])
            if both:
                grad = grad + g_vis * jnp.exp(logits - _get(col_lse_vis, c0, tc)[None, :])
            dx = _add(dx, scale * jnp.matmul(grad, yc, precision=PRECISION), r0)
            dy_vis = _add(dy_vis, scale * jnp.matmul(grad.T, xr, precision=PRECISION), c0)
            return dx, ds + jnp.sum(grad * dots), dy_vis

        dx, ds, dy_vis = _tile_loop(x, y_vis, tr, tc, body, (dx, ds, dy_vis))
        y_vis, col_lse_vis, g_vis, dy_vis = _shift((y_vis, col_lse_vis, g_vis, dy_vis), axis_name)
        return (dx, ds, y_vis, col_lse_vis, g_vis, dy_vis), None

    zeros = _varying((jnp.zeros_like(x), jnp.zeros((), x.dtype), jnp.zeros_like(y)), axis_name)
    init = (zeros[0], zeros[1], y, col_lse, g, zeros[2])
    (dx, ds, _, _, _, dy), _ = jax.lax.scan(ring_step, init, jnp.arange(p))
    return dx, dy, ds


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _clip_lse_sum(x, y, scale, axis_name, block):
    """Σ_i lse_i(rows) + Σ_j lse_j(columns) for this device's images i and texts j."""
    row_lse, col_lse = _softmax_fwd_ring(x, y, scale, axis_name, block, True, False)
    return jnp.sum(row_lse) + jnp.sum(col_lse)


def _clip_fwd(x, y, scale, axis_name, block):
    row_lse, col_lse = _softmax_fwd_ring(x, y, scale, axis_name, block, True, False)
    return jnp.sum(row_lse) + jnp.sum(col_lse), (x, y, scale, row_lse, col_lse)


def _clip_bwd(axis_name, block, res, g):
    x, y, scale, row_lse, col_lse = res
    return _softmax_bwd_ring(x, y, scale, row_lse, col_lse, g, axis_name, block, True, False)


_clip_lse_sum.defvjp(_clip_fwd, _clip_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _ntxent_lse_sum(a, inv_temp, axis_name, block):
    """Σ_i lse_i over this device's anchors a (rows = keys = a, self masked)."""
    return jnp.sum(_softmax_fwd_ring(a, a, inv_temp, axis_name, block, False, True)[0])


def _ntxent_fwd(a, inv_temp, axis_name, block):
    row_lse, _ = _softmax_fwd_ring(a, a, inv_temp, axis_name, block, False, True)
    return jnp.sum(row_lse), (a, row_lse)


def _ntxent_bwd(inv_temp, axis_name, block, res, g):
    a, row_lse = res
    dummy = jnp.zeros_like(row_lse)
    da_rows, da_keys, _ = _softmax_bwd_ring(a, a, inv_temp, row_lse, dummy, g, axis_name, block,
                                            False, True)
    return (da_rows + da_keys,)


_ntxent_lse_sum.defvjp(_ntxent_fwd, _ntxent_bwd)


# --------------------------------------------------------------------- sigmoid
def _sigmoid_fwd_ring(x, y, scale, bias, axis_name, block):
    tr, tc = tile_size(x.shape[0], block), tile_size(y.shape[0], block)

    def ring_step(carry, _):
        total, y_vis = carry

        def body(total, r0, c0, xr, yc):
            return total + jnp.sum(jax.nn.softplus(scale * _dots(xr, yc) + bias))

        total = _tile_loop(x, y_vis, tr, tc, body, total)
        return (total, _shift(y_vis, axis_name)), None

    (total, _), _ = jax.lax.scan(ring_step, (_varying(jnp.zeros((), x.dtype), axis_name), y), None,
                                 length=axis_size(axis_name))
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _siglip_softplus_sum(x, y, scale, bias, axis_name, block):
    """Σ_{i local, j global} softplus(s·x_i·y_j + b)."""
    return _sigmoid_fwd_ring(x, y, scale, bias, axis_name, block)


def _siglip_fwd(x, y, scale, bias, axis_name, block):
    return _sigmoid_fwd_ring(x, y, scale, bias, axis_name, block), (x, y, scale, bias)


def _siglip_bwd(axis_name, block, res, g):
    x, y, scale, bias = res
    tr, tc = tile_size(x.shape[0], block), tile_size(y.shape[0], block)

    def ring_step(carry, _):
        dx, ds, db, y_vis, dy_vis = carry

        def body(c, r0, c0, xr, yc):
            dx, ds, db, dy_vis = c
            dots = _dots(xr, yc)
            grad = g * jax.nn.sigmoid(scale * dots + bias)
            dx = _add(dx, scale * jnp.matmul(grad, yc, precision=PRECISION), r0)
            dy_vis = _add(dy_vis, scale * jnp.matmul(grad.T, xr, precision=PRECISION), c0)
            return dx, ds + jnp.sum(grad * dots), db + jnp.sum(grad), dy_vis

        dx, ds, db, dy_vis = _tile_loop(x, y_vis, tr, tc, body, (dx, ds, db, dy_vis))
        y_vis, dy_vis = _shift((y_vis, dy_vis), axis_name)
        return (dx, ds, db, y_vis, dy_vis), None

    zero = _varying(jnp.zeros((), x.dtype), axis_name)
    dx0, dy0 = _varying((jnp.zeros_like(x), jnp.zeros_like(y)), axis_name)
    init = (dx0, zero, zero, y, dy0)
    (dx, ds, db, _, dy), _ = jax.lax.scan(ring_step, init, None, length=axis_size(axis_name))
    return dx, dy, ds, db


_siglip_softplus_sum.defvjp(_siglip_fwd, _siglip_bwd)


# ------------------------------------------------------------------ the losses
def clip_ring(image_emb, text_emb, logit_scale, axis_name: AxisName, block_size: int):
    """Local sum of ½(row CE + column CE) over this device's pairs (see ``clip``)."""
    x, y = as_f32(image_emb), as_f32(text_emb)
    scale = as_f32(logit_scale)
    lse = _clip_lse_sum(x, y, _varying(scale, axis_name), axis_name, block_size)
    diag = scale * jnp.sum(x * y, axis=-1)
    return 0.5 * (lse - 2.0 * jnp.sum(diag))


def nt_xent_ring(a1, a2, temperature: float, axis_name: AxisName, block_size: int):
    """Local sum over this device's 2n anchors of (lse − positive logit) (see ``nt_xent``).

    a1, a2 are L2-normalised float32 views; rows are ordered [a1; a2] on every
    device so a global id p·2n + i identifies each embedding for the self mask.
    """
    anchors = jnp.concatenate([a1, a2], axis=0)
    lse = _ntxent_lse_sum(anchors, 1.0 / temperature, axis_name, block_size)
    pos = jnp.sum(a1 * a2, axis=-1) / temperature
    return lse - 2.0 * jnp.sum(pos)


def siglip_ring(image_emb, text_emb, logit_scale, logit_bias, axis_name: AxisName,
                block_size: int):
    """Local sum of −log σ(z·l) over this device's rows and all columns (see ``siglip``).

    Uses softplus(−l) = softplus(l) − l: all pairs are scored as negatives by the
    ring, and the diagonal (positives) is corrected locally.
    """
    x, y = as_f32(image_emb), as_f32(text_emb)
    scale, bias = as_f32(logit_scale), as_f32(logit_bias)
    total = _siglip_softplus_sum(x, y, _varying(scale, axis_name), _varying(bias, axis_name),
                                 axis_name, block_size)
    diag = scale * jnp.sum(x * y, axis=-1) + bias
    return total - jnp.sum(diag)
