"""Tests for jssl.evaluate: weighted kNN, linear probe, balanced subsets, result tables."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jssl.evaluate.knn import knn_accuracy, knn_predict
from jssl.evaluate.linear import _fit, _zeros, balanced_subset, linear_probe
from jssl.evaluate.report import Result, format_table, read_results, write_results

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("evaluate")


def knn_reference(train, train_y, test, k, temperature, num_classes):
    """Brute-force weighted kNN in float64 NumPy (Wu et al. 2018 / solo-learn)."""
    tr = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    te = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    preds = []
    for q in te.astype(np.float64):
        sims = tr.astype(np.float64) @ q
        idx = np.argsort(-sims, kind="stable")[:k]
        scores = np.zeros(num_classes)
        np.add.at(scores, train_y[idx], np.exp(sims[idx] / temperature))
        preds.append(int(np.argmax(scores)))
    return np.array(preds)


@pytest.fixture(scope="module")
def small_knn_data():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(97, 8)).astype(np.float32)
    test = rng.normal(size=(41, 8)).astype(np.float32)
    train_y = rng.integers(0, 5, size=97)
    return train, train_y, test


@pytest.mark.parametrize("k,chunk", [(1, 41), (5, 7), (20, 7), (20, 64), (97, 16), (20, 1)])
@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_knn_matches_numpy_reference(small_knn_data, k, chunk, temperature):
    train, train_y, test = small_knn_data
    got = knn_predict(train, train_y, test, num_classes=5, k=k, temperature=temperature,
                      chunk=chunk)
    want = knn_reference(train, train_y, test, k, temperature, 5)
    assert got.shape == (41,)
    np.testing.assert_array_equal(got, want)


def test_knn_accuracy_is_mean_of_correct_predictions(small_knn_data):
    train, train_y, test = small_knn_data
    test_y = np.arange(41) % 5
    want = knn_reference(train, train_y, test, 20, 0.07, 5)
    acc = knn_accuracy(train, train_y, test, test_y, num_classes=5, k=20, chunk=10)
    assert acc == pytest.approx(np.mean(want == test_y))


def test_knn_ties_go_to_lower_train_index_then_lower_class():
    v, u = np.array([1.0, 2.0, 0.5], np.float32), np.array([-1.0, 0.0, 3.0], np.float32)
    train = np.stack([u, v, 2 * v, v, v])  # four exact ties with cosine 1 (rows 1-4)
    labels = np.array([0, 2, 1, 0, 1])
    # k=2 keeps rows 1 and 2 (labels 2 and 1, equal weights): class tie -> class 1.
    assert knn_predict(train, labels, v[None], num_classes=3, k=2)[0] == 1
    assert knn_reference(train, labels, v[None], 2, 0.07, 3)[0] == 1
    # k=3 adds row 3 (label 0): one vote each -> class 0.
    assert knn_predict(train, labels, v[None], num_classes=3, k=3)[0] == 0


def test_knn_k1_on_train_set_is_exact():
    # Each train point's nearest neighbour (cosine 1) is itself: 100 % accuracy.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    assert knn_accuracy(x, y, x, y, num_classes=3, k=1, chunk=13) == 1.0


def blobs(n_per_class, num_classes, dim, seed, spread=0.5):
    rng = np.random.default_rng(seed)
    centers = np.eye(num_classes, dim) * 4.0  # orthogonal: also separable in angle
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centers])
    y = np.repeat(np.arange(num_classes), n_per_class)
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def test_separable_blobs_knn_and_linear_above_95_percent():
    # Shapes (400 x 10, 4 classes, max_iter 50) shared with the next two tests: one compile.
    xtr, ytr = blobs(100, 4, 10, seed=0)
    xte, yte = blobs(100, 4, 10, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte, num_classes=4) > 0.95
    out = linear_probe(xtr, ytr, xte, yte, num_classes=4, max_iter=50)
    assert out["accuracy"] > 0.95
    assert out["weight_decay"] in (1e-1, 1e-2, 1e-3, 1e-4)
    assert set(out["val_accuracy"]) == {1e-1, 1e-2, 1e-3, 1e-4}
    assert out["num_labeled"] == 400
    # 10 % labels (40 examples, 10 per class) still separate the blobs.
    out10 = linear_probe(xtr, ytr, xte, yte, num_classes=4, label_fraction=0.1, max_iter=50,
                         weight_decays=(1e-2,))
    assert out10["num_labeled"] == 40 and out10["accuracy"] > 0.95


def test_linear_probe_random_labels_is_chance():
    rng = np.random.default_rng(2)
    xtr, ytr = rng.normal(size=(400, 10)), rng.integers(0, 4, size=400)
    xte, yte = rng.normal(size=(3000, 10)), rng.integers(0, 4, size=3000)
    out = linear_probe(xtr, ytr, xte, yte, num_classes=4, max_iter=50)
    # Test labels are independent of everything the probe saw, so the number of
    # correct test predictions is Binomial(3000, 1/4): 5 sigma = 0.0395.
    sigma = np.sqrt(0.25 * 0.75 / 3000)
    assert abs(out["accuracy"] - 0.25) < 5 * sigma


def test_lbfgs_fit_reaches_numpy_optimum():
    """The returned params zero the NumPy-computed gradient of the regularised objective."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 10)).astype(np.float32)
    y = rng.integers(0, 4, size=400)
    mask = (np.arange(400) % 5 != 0).astype(np.float32)  # rows with mask 0 must be ignored
    wd = 1e-2
    params, iters, _ = _fit(_zeros(10, 4), jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask),
                            jnp.float32(wd), jnp.float32(1e-6), max_iter=50)
    x, y = x[mask == 1], y[mask == 1]
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    resid = (p - np.eye(4)[y]) / len(y)
    grad_w, grad_b = x.T @ resid + wd * w, resid.sum(0)
    assert np.linalg.norm(grad_w) < 1e-4 and np.linalg.norm(grad_b) < 1e-4
    assert 0 < int(iters) <= 50


def test_balanced_subset_exact_balanced_deterministic():
    labels = np.repeat(np.arange(10), 100)
    idx = balanced_subset(labels, 0.123, seed=5)
    assert idx.size == 123 and np.unique(idx).size == 123
    assert np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.min() == 12 and counts.max() == 13
    np.testing.assert_array_equal(idx, balanced_subset(labels, 0.123, seed=5))
    assert not np.array_equal(idx, balanced_subset(labels, 0.123, seed=6))
    np.testing.assert_array_equal(balanced_subset(labels, 1.0, seed=0), np.arange(1000))


def test_balanced_subset_small_class_gives_all_and_rest_share():
    labels = np.repeat(np.array([3, 0, 7, 1]), [50, 30, 5, 15])  # 100 labels, 4 classes
    idx = balanced_subset(labels, 0.4, seed=0)
    counts = {c: int(np.sum(labels[idx] == c)) for c in (3, 0, 7, 1)}
    # water-filling: class 7 gives all 5; 35 left -> 11 from class 1; 24 -> 12 + 12.
    assert counts == {7: 5, 1: 11, 0: 12, 3: 12}


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_balanced_subset_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(np.arange(100) % 10, fraction, seed=0)


def test_balanced_subset_rejects_fewer_examples_than_classes():
    with pytest.raises(ValueError, match="fewer than the 10 classes"):
        balanced_subset(np.arange(100) % 10, 0.05, seed=0)


def test_bad_inputs_raise_value_error_naming_the_argument():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(ValueError, match="train_labels must have shape \\(20,\\)"):
        knn_predict(x, y[:19], x, num_classes=2)
    with pytest.raises(ValueError, match="k must be an int in \\[1, num_train=20\\]"):
        knn_predict(x, y, x, num_classes=2, k=21)
    with pytest.raises(ValueError, match="test_labels must have shape \\(20,\\)"):
        knn_accuracy(x, y, x, y[:5], num_classes=2)
    with pytest.raises(ValueError, match="test_feats has dim 4"):
        knn_predict(x, y, rng.normal(size=(5, 4)), num_classes=2)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(x, y, x, num_classes=2, temperature=0.0)
    with pytest.raises(ValueError, match="train_labels must lie in \\[0, num_classes=2\\)"):
        knn_predict(x, y + 1, x, num_classes=2)
    with pytest.raises(ValueError, match="train_feats must be a non-empty 2-D array"):
        knn_predict(x[:, 0], y, x, num_classes=2)
    with pytest.raises(ValueError, match="label_fraction must lie in \\(0, 1\\]"):
        linear_probe(x, y, x, y, num_classes=2, label_fraction=0.0)
    with pytest.raises(ValueError, match="label_fraction must lie in \\(0, 1\\]"):
        linear_probe(x, y, x, y, num_classes=2, label_fraction=1.01)
    with pytest.raises(ValueError, match="train_labels must have shape"):
        linear_probe(x, y[:3], x, y, num_classes=2)
    with pytest.raises(ValueError, match="weight_decays"):
        linear_probe(x, y, x, y, num_classes=2, weight_decays=(-1.0,))


def test_report_table_and_merging(tmp_path):
    path = tmp_path / "results.json"
    lin = Result("raw pixels", "linear", "top1_accuracy", 0.8412, dataset="fashion_mnist",
                 extras={"wall_time_s": 12.25})
    lin1 = Result("raw pixels", "linear", "top1_accuracy", 0.7, label_fraction=0.01,
                  dataset="fashion_mnist")
    knn = Result("raw pixels", "knn", "top1_accuracy", 0.8555, dataset="fashion_mnist",
                 params={"k": 20, "temperature": 0.07})
    write_results(path, [lin, knn])
    # Re-running replaces the same measurement (new value) and appends new ones.
    lin_new = Result("raw pixels", "linear", "top1_accuracy", 0.845, dataset="fashion_mnist",
                     label_fraction=1)
    merged = write_results(path, [lin_new, lin1])
    assert [r.value for r in merged] == [0.845, 0.8555, 0.7]
    assert read_results(path) == merged
    assert len(json.loads(path.read_text())["results"]) == 3

    table = format_table(merged)
    assert "linear probe (100 % labels)" in table
    assert "linear probe (1 % labels)" in table
    assert "kNN k=20 T=0.07" in table
    assert "84.50 %" in table and "85.55 %" in table and "70.00 %" in table
    assert len(table.splitlines()) == 2 + 3
    other = format_table([
        Result("mae", "finetune", "top1_accuracy", 0.9, label_fraction=0.1,
               extras={"epochs": 100, "backbone": "vit-t"}),
        Result("mae", "svm", "top1_accuracy", 0.8, params={"c": 1.0}),
    ])
    assert "fine-tune (10 % labels)" in other and "svm c=1.0 (100 % labels)" in other
    assert "| epochs" in other and "vit-t" in other and "100" in other


def test_result_validation():
    with pytest.raises(ValueError, match="params with 'k' and 'temperature'"):
        Result("m", "knn", "top1_accuracy", 0.5)
    with pytest.raises(ValueError, match="label_fraction"):
        Result("m", "linear", "top1_accuracy", 0.5, label_fraction=2.0)
    with pytest.raises(ValueError, match="value"):
        Result("m", "linear", "top1_accuracy", float("nan"))
