"""Result records, a merging ``results.json`` writer and a table that names every protocol.

A :class:`Result` is one number: which representation (``method``), measured how
(``protocol`` + ``params`` + ``label_fraction``), which ``metric`` and its
``value``; ``extras`` holds free-form context (backbone, epochs, wall time,
hardware, command). ``results.json`` has the form ``{"results": [record, ...]}``.
Two records are the *same measurement* when method, dataset, protocol, params,
label_fraction and metric are equal; :func:`write_results` replaces such a
record in place and appends the others, so re-running a benchmark updates its
rows instead of duplicating them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("linear", "knn", "finetune")


@dataclass(frozen=True)
class Result:
    """One evaluation number; see the module docstring.

    ``protocol`` is ``"linear"`` (linear probe), ``"knn"`` (``params`` must hold
    ``k`` and ``temperature``), ``"finetune"``, or any other name (printed as is,
    followed by its params). ``label_fraction`` in (0, 1] is the fraction of
    train labels the protocol used.
    """

    method: str
    protocol: str
    metric: str
    value: float
    label_fraction: float = 1.0
    dataset: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("method", "protocol", "metric"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty str, got {getattr(self, name)!r}")
        if not isinstance(self.value, int | float) or not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value!r}")
        lf = self.label_fraction
        if not isinstance(lf, int | float) or not math.isfinite(lf) or not 0.0 < lf <= 1.0:
            raise ValueError(f"label_fraction must lie in (0, 1], got {lf!r}")
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "label_fraction", float(lf))
        if self.protocol == "knn" and not {"k", "temperature"} <= set(self.params):
            raise ValueError(
                f"a knn Result needs params with 'k' and 'temperature', got params={self.params!r}"
            )

    def key(self) -> str:
        """Identity of the measurement (everything except value and extras)."""
        return json.dumps(
            [self.method, self.dataset, self.protocol, self.params, self.label_fraction,
             self.metric],
            sort_keys=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Result fields {sorted(unknown)}; expected a subset of "
                             f"{sorted(names)}")
        return cls(**d)


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def protocol_label(result: Result) -> str:
    """Human name of how the number was measured, e.g. ``linear probe (10 % labels)``."""
    labels = f"{_percent(result.label_fraction)} labels"
    if result.protocol == "linear":
        return f"linear probe ({labels})"
    if result.protocol == "knn":
        p = result.params
        name = f"kNN k={p['k']} T={p['temperature']:g}"
        return name if result.label_fraction == 1.0 else f"{name} ({labels})"
    if result.protocol == "finetune":
        return f"fine-tune ({labels})"
    extra = " ".join(f"{k}={v}" for k, v in sorted(result.params.items()))
    return f"{result.protocol} {extra} ({labels})".replace("  ", " ")


def read_results(path: str | os.PathLike) -> list[Result]:
    """Records of ``path`` (``[]`` if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} must hold {{'results': [...]}}, got {type(data).__name__}; "
                         "move it aside or fix it")
    return [Result.from_dict(r) for r in data["results"]]


def write_results(path: str | os.PathLike, results: Iterable[Result]) -> list[Result]:
    """Merge ``results`` into the JSON file at ``path`` and return all its records.

    A new record replaces an existing one with the same :meth:`Result.key`
    (keeping its position); other new records are appended in order. The file
    is written atomically (temporary file + ``os.replace``).
    """
    results = list(results)
    for r in results:
        if not isinstance(r, Result):
            raise ValueError(f"results must be Result records, got {type(r).__name__}")
    merged = read_results(path)
    position = {r.key(): i for i, r in enumerate(merged)}
    for r in results:
        if r.key() in position:
            merged[position[r.key()]] = r
        else:
            position[r.key()] = len(merged)
            merged.append(r)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump({"results": [r.to_dict() for r in merged]}, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(f.name, path)
    return merged


def _format_value(r: Result) -> str:
    if "accuracy" in r.metric and 0.0 <= r.value <= 1.0:
        return f"{r.value * 100:.2f} %"
    return f"{r.value:.4g}"


def format_table(results: Iterable[Result]) -> str:
    """A Markdown table: method, dataset, protocol (via :func:`protocol_label`),
    metric, value (accuracies as percentages), plus ``backbone``, ``epochs`` and
    ``wall_time_s`` columns when any record's extras has them."""
    results = list(results)
    optional = [c for c in ("backbone", "epochs", "wall_time_s")
                if any(c in r.extras for r in results)]
    header = ["method", "dataset", "protocol", "metric", "value", *optional]
    rows = []
    for r in results:
        row = [r.method, r.dataset, protocol_label(r), r.metric, _format_value(r)]
        for c in optional:
            v = r.extras.get(c, "")
            row.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)
