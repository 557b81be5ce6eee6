"""Image–text evaluation: zero-shot classification, retrieval recall@k and a retrieval grid.

Zero-shot (CLIP §3.1.4, prompt ensembling): class c's weight is the re-normalised mean of the
normalised text embeddings of its P prompts,

    w_c = normalise((1/P) Σ_p y_{c,p}),   prediction(x) = argmax_c x·w_c.

Retrieval recall@k: for query q with similarities s_q· over a gallery and a set R_q of
relevant gallery items, recall@k = (1/Q) Σ_q [R_q ∩ top_k(s_q·) ≠ ∅] (ties broken by gallery
order). On the held-out split (``jssl.data.captions``: test images, held-out templates) a
caption is relevant to an image when it names the image's class:

    image→text: queries = the N test images, gallery = the C·P distinct held-out captions;
    text→image: queries = the C·P captions, gallery = the N test images.

A captioned dataset (``jssl.data.image_text_tfds``: COCO captions, no class names) has
retrieval only, on the first N held-out images and all their captions (CLIP's COCO 5k
protocol): image→text counts any of the image's own captions as relevant, text→image the
caption's one image (``caption_retrieval_results``).

No labels are trained on: ``label_fraction`` is 0 for every number.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jssl.data import captions
from jssl.data.inputs import eval_arrays, load_source
from jssl.evaluate.features import extract_features

log = logging.getLogger(__name__)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_weights(text_emb: np.ndarray) -> np.ndarray:
    """Class weights [C, E] from prompt embeddings [C, P, E] (mean over P, re-normalised)."""
    if np.ndim(text_emb) != 3:
        raise ValueError(f"text_emb of shape {np.shape(text_emb)}: expected [classes, prompts, "
                         f"dim]; reshape the prompt embeddings per class")
    return _normalise(_normalise(text_emb).mean(axis=1))


def zero_shot_predict(image_emb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """argmax_c x·w_c for every image embedding [N, E] -> int [N]."""
    return np.argmax(np.asarray(image_emb) @ np.asarray(weights).T, axis=1)


def recall_at_k(sim: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """{k: fraction of queries (rows of ``sim`` [Q, G]) with a relevant item in their top k}."""
    if np.shape(sim) != np.shape(relevant) or np.ndim(sim) != 2:
        raise ValueError(f"sim {np.shape(sim)} and relevant {np.shape(relevant)} must both be "
                         f"[queries, gallery]")
    if any(not 1 <= k <= sim.shape[1] for k in ks):
        raise ValueError(f"ks={tuple(ks)}: every k must be in [1, gallery={sim.shape[1]}]")
    order = np.argsort(-np.asarray(sim), axis=1, kind="stable")[:, :max(ks)]
    hits = np.take_along_axis(np.asarray(relevant, bool), order, axis=1)
    return {int(k): float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def plot_retrievals(images: np.ndarray, labels: np.ndarray, queries: Sequence[str],
                    query_labels: Sequence[int], sim: np.ndarray, out_png: Path,
                    top: int = 8) -> Path:
    """One row per text query: its ``top`` images (green frame: right class, red: wrong)."""
    from jssl.train.plots import _figure

    fig = _figure(1.1 * top + 2.6, 1.1 * len(queries))
    order = np.argsort(-sim, axis=1, kind="stable")[:, :top]
    for r, (text, label) in enumerate(zip(queries, query_labels, strict=True)):
        for c, idx in enumerate(order[r]):
            ax = fig.add_subplot(len(queries), top, r * top + c + 1)
            img = images[idx]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("tab:green" if labels[idx] == label else "tab:red")
                spine.set_linewidth(2.5)
            if c == 0:
                ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("text → image retrieval on held-out captions (green: right class)")
    fig.subplots_adjust(left=2.4 / (1.1 * top + 2.6), right=0.99, wspace=0.05, hspace=0.1)
    fig.savefig(out_png)
    return Path(out_png)


def evaluate_image_text(method: Any, state: Any, workdir: Path) -> tuple[list[dict], int]:
    """``image_text_results`` on the config's test split (``caption_retrieval_results`` on a
    captioned dataset, ``config.data.modality == "image_text"``); returns (results, number
    of train-split examples)."""
    config = method.config
    variables = {"params": state.params, **state.variables}
    if config.data.get("modality") == "image_text":  # a captioned dataset: retrieval only
        from jssl.data.image_text_tfds import retrieval_set

        images, tokens, owner, n_train = retrieval_set(config)
        return caption_retrieval_results(method, variables, state.extra, images, tokens,
                                         owner, f"{config.data.name}:{config.data.test_split}"
                                         ), n_train
    test_x, test_y = eval_arrays(config.data, config.data.test_split)
    n_train = len(load_source(config.data, config.data.train_split))
    return image_text_results(method, variables, state.extra, test_x, test_y, workdir), n_train


def image_text_results(method: Any, variables: Any, extra: Any, images: np.ndarray,
                       labels: np.ndarray, workdir: Path) -> list[dict]:
    """Zero-shot accuracy and i2t / t2i recall@k (``config.eval.recall_k``) of ``images``
    against the held-out captions of ``method.class_names``; writes
    ``workdir/retrievals.png``. ``method`` gives ``features``, ``text_features``,
    ``vocab``, ``max_len``, ``class_names``, ``config`` and ``mesh``."""
    ks = tuple(method.config.eval.get("recall_k", (1, 5)))
    t0 = time.perf_counter()
    img = extract_features(method, variables, extra, images, method.mesh)
    texts = captions.class_captions(method.class_names, captions.HELD_OUT_TEMPLATES)
    flat = [t for per_class in texts for t in per_class]
    caption_y = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    tokens = np.stack([method.vocab.encode(t, method.max_len) for t in flat])
    txt = method.text_features(variables, tokens)
    log.info("embedded %d images and %d captions in %.1f s", len(img), len(txt),
             time.perf_counter() - t0)
    prompts = len(captions.HELD_OUT_TEMPLATES) * len(method.class_names[0])
    weights = zero_shot_weights(txt.reshape(len(texts), -1, txt.shape[-1]))
    accuracy = float(np.mean(zero_shot_predict(img, weights) == labels))
    results = [{"protocol": f"zero-shot ({prompts} held-out prompts per class)",
                "kind": "zero_shot", "label_fraction": 0.0, "accuracy": accuracy}]
    sim = np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T  # [N, C·P]
    relevant = labels[:, None] == caption_y[None, :]
    for name, s, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
        arrow = "image→text" if name == "i2t" else "text→image"
        for k, value in recall_at_k(s, rel, ks).items():
            results.append({"protocol": f"{arrow} recall@{k} (held-out)",
                            "kind": f"recall_{name}@{k}", "label_fraction": 0.0,
                            "accuracy": value})
    if jax.process_index() == 0:
        first = [per_class[0] for per_class in texts]
        rows = [flat.index(q) for q in first]
        plot_retrievals(images, labels, first, list(range(len(texts))), sim.T[rows],
                        Path(workdir) / "retrievals.png")
    return results


def text_embeddings(method: Any, variables: Any, tokens: np.ndarray,
                    batch_size: int = 1024) -> np.ndarray:
    """``method.text_features`` of token rows [M, L] in chunks of ``batch_size`` (the last
    padded with copies of row 0, dropped), so one compiled program serves every chunk."""
    out = []
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size]
        pad = min(batch_size, len(tokens)) - len(chunk)
        chunk = np.concatenate([chunk, np.repeat(tokens[:1], pad, 0)]) if pad else chunk
        out.append(np.asarray(method.text_features(variables, chunk))[:len(chunk) - pad])
    return np.concatenate(out)


def caption_retrieval_results(method: Any, variables: Any, extra: Any, images: np.ndarray,
                              tokens: np.ndarray, owner: np.ndarray, split: str
                              ) -> list[dict]:
    """Image→text and text→image recall@k (``config.eval.recall_k``) of N images and their
    M captions (caption m belongs to image ``owner[m]``), CLIP's COCO protocol:

        image→text: queries = the N images, relevant = ALL captions of the image;
        text→image: queries = the M captions, relevant = the one image it describes.
    """
    ks = tuple(method.config.eval.get("recall_k", (1, 5)))
    owner = np.asarray(owner)
    if len(owner) != len(tokens) or owner.min() < 0 or owner.max() >= len(images):
        raise ValueError(f"owner must give an image in [0, {len(images)}) for each of the "
                         f"{len(tokens)} captions")
    t0 = time.perf_counter()
    img = _normalise(extract_features(method, variables, extra, images, method.mesh))
    txt = _normalise(text_embeddings(method, variables, tokens))
    log.info("embedded %d images and %d captions in %.1f s", len(img), len(txt),
             time.perf_counter() - t0)
    sim = (img @ txt.T).astype(np.float32)  # [N, M]
    relevant = np.arange(len(images))[:, None] == owner[None, :]
    results = []
    for name, s, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
        arrow = "image→text" if name == "i2t" else "text→image"
        for k, value in recall_at_k(s, rel, ks).items():
            results.append({"protocol": f"{arrow} recall@{k} ({split}, {len(images)} images, "
                                        f"{len(tokens)} captions)",
                            "kind": f"recall_{name}@{k}", "label_fraction": 0.0,
                            "accuracy": value})
    return results
