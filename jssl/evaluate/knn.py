"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of Wu et al. 2018 ("Unsupervised feature learning via
non-parametric instance discrimination"), used by DINO and by solo-learn's
``WeightedKNNClassifier`` (cosine distance):

1. Every train and test feature vector is L2-normalised
   (``x / max(||x||, 1e-12)``; an all-zero vector stays zero).
2. For each test feature the cosine similarity ``s_i`` to *every* train
   feature is computed (float32) and the ``k`` largest are kept
   (``jax.lax.top_k``; ties go to the lower train index).
3. Each of those neighbours votes for its label with weight ``exp(s_i / T)``.
4. The class score is the sum of the weights of the neighbours with that
   class; the prediction is the class with the highest score (ties go to the
   lower class index).

Defaults: ``k=20``, ``T=0.07`` (solo-learn); lightly and VISSL use ``k=200``,
``T=0.1``. The test set is processed in chunks of ``chunk`` rows by one jitted
function, so only a ``chunk x num_train`` similarity block exists at a time
(60 000 x 10 000 with D = 2048 fits comfortably on a CPU). The last chunk is
zero-padded to ``chunk`` rows so the function compiles once.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
DEFAULT_CHUNK = 256


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of ``x`` divided by their L2 norm (norms below ``eps`` count as ``eps``)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


@partial(jax.jit, static_argnames=("k", "num_classes"))
def _predict_chunk(
    test_chunk: jax.Array,
    train_normed: jax.Array,
    train_labels: jax.Array,
    temperature: jax.Array,
    *,
    k: int,
    num_classes: int,
) -> jax.Array:
    """Predicted labels (chunk,) for one chunk of raw test features (chunk, D)."""
    q = l2_normalize(test_chunk.astype(jnp.float32))
    sims = jnp.matmul(q, train_normed.T, precision=jax.lax.Precision.HIGHEST)
    top_sims, top_idx = jax.lax.top_k(sims, k)  # (chunk, k)
    weights = jnp.exp(top_sims / temperature)
    one_hot = jax.nn.one_hot(train_labels[top_idx], num_classes, dtype=jnp.float32)
    scores = jnp.einsum("ck,ckn->cn", weights, one_hot)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def _check_features(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (num_examples, dim), got shape {x.shape}; "
            "flatten images or pool feature maps first"
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf values; fix the feature extractor")
    return x


def check_labels(name: str, labels: np.ndarray, num_examples: int, num_classes: int) -> np.ndarray:
    """``labels`` as an int array of shape (num_examples,) with values in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_examples:
        raise ValueError(
            f"{name} must have shape ({num_examples},) to match the features, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, num_classes={num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]; pass the right num_classes"
        )
    return labels.astype(np.int32)


def knn_predict(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    *,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Weighted-kNN predictions (num_test,) int32 for ``test_feats`` (see module docstring).

    Args:
      train_feats: (num_train, D) features of the labelled bank.
      train_labels: (num_train,) int class ids in [0, num_classes).
      test_feats: (num_test, D) features to classify.
      num_classes: number of classes.
      k: neighbours per test example, 1 <= k <= num_train.
      temperature: T > 0 in the vote weight exp(cosine / T).
      chunk: test rows per jitted step (memory: chunk * num_train floats).
    """
    train_feats = _check_features("train_feats", train_feats)
    test_feats = _check_features("test_feats", test_feats)
    if not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    train_labels = check_labels("train_labels", train_labels, train_feats.shape[0], num_classes)
    if test_feats.shape[1] != train_feats.shape[1]:
        raise ValueError(
            f"test_feats has dim {test_feats.shape[1]} but train_feats has dim "
            f"{train_feats.shape[1]}; extract both with the same backbone"
        )
    num_train = train_feats.shape[0]
    if not isinstance(k, int | np.integer) or not 1 <= k <= num_train:
        raise ValueError(
            f"k must be an int in [1, num_train={num_train}], got k={k!r}; lower k or add "
            "train examples"
        )
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")

    train_normed = l2_normalize(jnp.asarray(train_feats, jnp.float32))
    train_lab = jnp.asarray(train_labels)
    temp = jnp.float32(temperature)
    num_test = test_feats.shape[0]
    chunk = int(min(chunk, num_test))
    preds = np.empty((num_test,), np.int32)
    for start in range(0, num_test, chunk):
        block = np.asarray(test_feats[start : start + chunk], np.float32)
        n = block.shape[0]
        if n < chunk:
            block = np.concatenate([block, np.zeros((chunk - n, block.shape[1]), np.float32)])
        out = _predict_chunk(
            jnp.asarray(block), train_normed, train_lab, temp, k=int(k), num_classes=num_classes
        )
        preds[start : start + n] = np.asarray(out)[:n]
    return preds


def knn_accuracy(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk: int = DEFAULT_CHUNK,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict` on ``(test_feats, test_labels)``."""
    test_feats = _check_features("test_feats", test_feats)
    if not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    test_labels = check_labels("test_labels", test_labels, test_feats.shape[0], num_classes)
    preds = knn_predict(
        train_feats, train_labels, test_feats,
        num_classes=num_classes, k=k, temperature=temperature, chunk=chunk,
    )
    return float(np.mean(preds == test_labels))
