"""Linear probe: multinomial logistic regression on frozen features.

Protocol of :func:`linear_probe` (every step is deterministic given ``seed``):

1. **Labelled subset.** ``label_fraction`` < 1 keeps the class-balanced subset
   :func:`balanced_subset` ``(train_labels, label_fraction, seed)`` of the
   train set (the semi-supervised 1 % / 10 % protocol); 1.0 keeps all of it.
2. **Standardisation.** Every feature dimension is shifted and scaled by the
   mean and standard deviation over *all* rows of ``train_feats`` (features
   need no labels, so the full train set is used even at 1 % labels);
   dimensions with std <= 1e-6 * max std (e.g. constant border pixels) are only
   centred. The same affine map is applied to the test features.
3. **Objective.** ``mean_i CE(softmax(x_i W + b), y_i) + wd / 2 * ||W||^2``
   (bias not decayed), W and b initialised to zero, float32.
4. **Optimiser.** Full-batch L-BFGS (``optax.lbfgs``: memory 10, zoom line
   search of at most 20 steps, one jitted ``lax.while_loop``), stopped after
   ``max_iter`` (150) iterations or when the gradient's global L2 norm drops
   below ``tol`` (1e-4). On 60 000 x 784 standardised pixels the budget, not
   ``tol``, usually ends the fit (gradient norm ~1e-2); test accuracy then moves
   by < 0.2 points between 100 and 400 iterations.
5. **Weight-decay selection.** A class-balanced ``val_fraction`` (10 %) of the
   labelled subset (:func:`balanced_subset` with ``seed + 1``) is held out; the
   probe is fitted on the rest once per ``wd`` in ``weight_decays``
   (default ``(1e-1, 1e-2, 1e-3, 1e-4)``; largest
   first, each fit warm-started from the previous solution) and the ``wd`` with
   the highest held-out accuracy wins (ties: the larger ``wd``). With a single
   grid value this step is skipped.
6. **Refit and test.** The probe is refitted on the whole labelled subset with
   the chosen ``wd`` (L-BFGS again, warm-started from that ``wd``'s held-out
   fit; the objective is strictly convex for ``wd`` > 0, so the start only
   changes the speed); the reported accuracy is top-1 on the test set.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from jssl.evaluate.knn import _check_features, check_labels

DEFAULT_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4)
DEFAULT_MAX_ITER = 150
DEFAULT_TOL = 1e-4


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of ``labels``.

    The subset has exactly ``n = floor(fraction * len(labels) + 0.5)`` elements.
    The classes present share ``n`` as evenly as possible: each gets
    ``n // num_present`` (a class with fewer examples gives all of them and the
    shortfall is shared by the others), and the leftover ``+1``s go to a
    seeded random choice of classes that still have examples. Within a class
    the examples are a uniformly random choice. Same ``(labels, fraction,
    seed)`` -> same indices.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got fraction={fraction!r}")
    classes, counts = np.unique(labels, return_counts=True)
    total = int(np.floor(fraction * labels.size + 0.5))
    if total < classes.size:
        raise ValueError(
            f"fraction={fraction} of {labels.size} labels selects {total} examples, fewer than "
            f"the {classes.size} classes; use a larger fraction"
        )
    rng = np.random.default_rng(seed)
    quota = np.zeros_like(counts)
    remaining = total
    # Water-filling: small classes are exhausted first, the rest share evenly.
    order = np.argsort(counts, kind="stable")
    for pos, c in enumerate(order):
        share = remaining // (classes.size - pos)
        quota[c] = min(counts[c], share)
        remaining -= quota[c]
    spare = np.flatnonzero(quota < counts)
    quota[rng.permutation(spare)[:remaining]] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == cls))[: quota[i]] for i, cls in enumerate(classes)
    ]
    return np.sort(np.concatenate(picked))


def _standardizer(x: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (mean, std) of ``x`` in float64, computed over row blocks."""
    n = x.shape[0]
    mean = np.zeros(x.shape[1], np.float64)
    for s in range(0, n, block):
        mean += x[s : s + block].sum(axis=0, dtype=np.float64)
    mean /= n
    var = np.zeros_like(mean)
    for s in range(0, n, block):
        var += np.square(x[s : s + block].astype(np.float64) - mean).sum(axis=0)
    std = np.sqrt(var / n)
    std = np.where(std <= 1e-6 * max(std.max(), 1e-30), 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def _objective(
    params: dict, x: jax.Array, y_onehot: jax.Array, mask: jax.Array, wd: jax.Array
) -> jax.Array:
    logits = x @ params["w"] + params["b"]
    # One-hot form: avoids the gather/scatter of integer labels, slow on CPU.
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(y_onehot * logits, axis=-1)
    return jnp.sum(mask * ce) / jnp.sum(mask) + 0.5 * wd * jnp.sum(jnp.square(params["w"]))


@partial(jax.jit, static_argnames=("max_iter",))
def _fit(
    params: dict,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    wd: jax.Array,
    tol: jax.Array,
    *,
    max_iter: int,
) -> tuple[dict, jax.Array, jax.Array]:
    """L-BFGS on :func:`_objective` over the rows with ``mask`` 1, starting at ``params``.

    Rows with mask 0 are ignored (the held-out split), so the grid search and the
    refit share one compiled program. Returns (params, iterations, grad norm).
    """
    y_onehot = jax.nn.one_hot(y, params["b"].shape[0])
    fun = partial(_objective, x=x, y_onehot=y_onehot, mask=mask.astype(jnp.float32), wd=wd)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(p, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (err >= tol))

    params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
    grad_norm = otu.tree_norm(jax.grad(fun)(params))
    return params, otu.tree_get(state, "count"), grad_norm


@jax.jit
def _predict(params: dict, x: jax.Array) -> jax.Array:
    return jnp.argmax(x @ params["w"] + params["b"], axis=-1)


def _accuracy(params: dict, x: jax.Array, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(_predict(params, x)) == y))


def _zeros(dim: int, num_classes: int) -> dict:
    return {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}


def linear_probe(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    label_fraction: float = 1.0,
    seed: int = 0,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> dict:
    """Run the linear-probe protocol of the module docstring.

    Returns a dict with ``accuracy`` (test top-1 in [0, 1]), ``weight_decay``
    (the chosen wd), ``val_accuracy`` ({wd: held-out accuracy}),
    ``train_accuracy`` (on the labelled subset), ``num_labeled``,
    ``label_fraction``, ``iterations`` and ``grad_norm`` of the final fit,
    ``converged`` (grad_norm < tol) and ``wall_time_s``.
    """
    t0 = time.perf_counter()
    train_feats = _check_features("train_feats", train_feats)
    test_feats = _check_features("test_feats", test_feats)
    if not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    train_labels = check_labels("train_labels", train_labels, train_feats.shape[0], num_classes)
    test_labels = check_labels("test_labels", test_labels, test_feats.shape[0], num_classes)
    if test_feats.shape[1] != train_feats.shape[1]:
        raise ValueError(
            f"test_feats has dim {test_feats.shape[1]} but train_feats has dim "
            f"{train_feats.shape[1]}; extract both with the same backbone"
        )
    if not np.isfinite(label_fraction) or not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction must lie in (0, 1], got {label_fraction!r}")
    if not np.isfinite(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    wds = sorted((float(w) for w in weight_decays), reverse=True)
    if not wds or any(not np.isfinite(w) or w < 0 for w in wds):
        raise ValueError(
            f"weight_decays must be a non-empty sequence of finite values >= 0, "
            f"got {list(weight_decays)!r}"
        )
    if not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")

    mean, std = _standardizer(train_feats)
    labeled = (
        np.arange(train_feats.shape[0])
        if label_fraction == 1.0
        else balanced_subset(train_labels, label_fraction, seed)
    )
    x_lab = jnp.asarray((train_feats[labeled] - mean) / std, jnp.float32)
    y_lab = train_labels[labeled]
    y_lab_dev = jnp.asarray(y_lab)
    dim, tol_arr = train_feats.shape[1], jnp.float32(tol)

    val_acc: dict[float, float] = {}
    if len(wds) > 1:
        try:
            val_idx = balanced_subset(y_lab, val_fraction, seed + 1)
        except ValueError as err:
            raise ValueError(
                f"the {y_lab.size} labelled examples are too few for a held-out split with "
                f"val_fraction={val_fraction} ({err}); raise label_fraction or val_fraction, "
                "or pass a single value in weight_decays"
            ) from err
        fit_mask = np.ones(y_lab.size, np.float32)
        fit_mask[val_idx] = 0.0
        fit_mask = jnp.asarray(fit_mask)
        x_val, y_val = x_lab[val_idx], y_lab[val_idx]
        params, solutions = _zeros(dim, num_classes), {}
        for wd in wds:  # largest first: warm starts move towards weaker regularisation
            params, _, _ = _fit(
                params, x_lab, y_lab_dev, fit_mask, jnp.float32(wd), tol_arr, max_iter=max_iter
            )
            val_acc[wd], solutions[wd] = _accuracy(params, x_val, y_val), params
        best_wd = max(wds, key=lambda w: (val_acc[w], w))
        start = solutions[best_wd]
    else:
        best_wd, start = wds[0], _zeros(dim, num_classes)

    params, iters, grad_norm = _fit(
        start, x_lab, y_lab_dev, jnp.ones(y_lab.size), jnp.float32(best_wd), tol_arr,
        max_iter=max_iter,
    )
    x_test = jnp.asarray((test_feats - mean) / std, jnp.float32)
    return {
        "accuracy": _accuracy(params, x_test, test_labels),
        "weight_decay": best_wd,
        "val_accuracy": val_acc,
        "train_accuracy": _accuracy(params, x_lab, y_lab),
        "num_labeled": int(labeled.size),
        "label_fraction": float(label_fraction),
        "iterations": int(iters),
        "grad_norm": float(grad_norm),
        "converged": bool(float(grad_norm) < tol),
        "wall_time_s": time.perf_counter() - t0,
    }
