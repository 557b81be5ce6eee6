"""PNG plots of a run: training curves and a 2-D PCA view of embeddings.

Uses matplotlib's object API with the Agg canvas (no display, no global
backend switch). matplotlib is imported lazily so the rest of jssl works
without it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jssl.train.metrics import read_metrics


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("jssl.train.plots needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike,
                keys: Sequence[str] | None = None) -> Path:
    """One panel per metric (default: every numeric key but step/time) against step."""
    records = read_metrics(metrics_jsonl)
    if keys is None:
        keys = sorted({k for r in records for k, v in r.items()
                       if k not in ("step", "time") and isinstance(v, int | float)})
    if not keys:
        raise ValueError(f"{metrics_jsonl} has no metrics to plot")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(4.0 * cols, 3.0 * rows)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def pca_2d(features: Any) -> np.ndarray:
    """Project ``features`` ``[n, d]`` onto their top-2 principal components (``[n, 2]``)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [n >= 2, d], got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    if proj.shape[1] < 2:  # d == 1: pad a zero second coordinate
        proj = np.concatenate([proj, np.zeros_like(proj)], axis=1)
    return proj


def plot_embedding_2d(features: Any, labels: Any, out_png: str | os.PathLike,
                      title: str = "embedding (PCA)") -> Path:
    """Scatter the 2-D PCA of ``features`` coloured by integer ``labels``."""
    xy = pca_2d(features)
    labels = np.asarray(labels)
    if labels.shape != (xy.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {xy.shape[0]} features")
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    classes = np.unique(labels)
    for c in classes:
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, label=str(c))
    if len(classes) <= 20:
        ax.legend(markerscale=2, fontsize="small", loc="best")
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
