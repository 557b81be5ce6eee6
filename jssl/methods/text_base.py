"""What the text methods (BERT, RoBERTa, GPT) share: token batches, frozen features and the
text evaluation run by ``jssl.train.run`` in place of the image protocols.

Evaluation (``evaluate``), on the held-out fortunes of ``jssl.data.fortunes``:

1. the method's own pretext number (``pretext_results``): held-out masked-token accuracy
   (BERT) or perplexity next to n-gram baselines (GPT);
2. fortune-category classification: one fortune a row, features = the encoder output
   mean-pooled over the non-padding tokens, a linear probe (``linear_probe``) with each label
   fraction of ``config.eval.label_fractions``, for the pretrained encoder and for the same
   encoder randomly initialised (``init`` with another key).

The tokenizer is copied into the workdir (``tokenizer.model``).
"""
from __future__ import annotations

import abc
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.data import fortunes
from jssl.evaluate.features import extract_features
from jssl.evaluate.linear import linear_probe
from jssl.methods.base import Method
from jssl.train.mesh import batch_axes, num_batch_devices


def mean_pool(hidden: jax.Array, tokens: jax.Array) -> jax.Array:
    """Σ_t m_t h_t / max(Σ_t m_t, 1) over the non-padding tokens (m = tokens != PAD) → [B, D]."""
    m = (tokens != fortunes.PAD).astype(jnp.float32)[..., None]
    return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def model_kwargs(config: Any) -> tuple[str, dict[str, Any]]:
    """(preset, overrides) of ``config.model.encoder``: its fields but ``name``, with a
    ``dtype`` name turned into the dtype."""
    m = config.model.encoder.to_dict()
    m.pop("name", None)
    if "dtype" in m:
        m["dtype"] = jnp.dtype(m["dtype"])
    return m.pop("preset"), m


class TextMethod(Method, abc.ABC):
    """Base of the token-sequence methods; subclasses define ``encode`` and ``pretext_results``."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        self.vocab_size = int(config.data.vocab_size)
        self.seq_len = int(config.data.seq_len)
        self.num_sentinels = int(config.data.get("num_sentinels", 0))

    # ----------------------------------------------------------------------- batch shapes
    def dummy_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of a training batch (for tracing without data)."""
        shape = (batch_size, self.seq_len)
        out = {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32),
               "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
        if self.config.data.packing == "nsp_pairs":
            out["segment_ids"] = jax.ShapeDtypeStruct(shape, jnp.int32)
            out["nsp_label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        return out

    # --------------------------------------------------------------------------- features
    @abc.abstractmethod
    def encode(self, variables: Any, tokens: jax.Array) -> jax.Array:
        """Encoder output [B, L, D] of token rows (deterministic)."""

    def features(self, variables, extra, tokens):
        # extract_features hands float32 copies of the ids (exact below 2**24).
        tokens = jnp.round(tokens).astype(jnp.int32)
        return mean_pool(self.encode(variables, tokens), tokens)

    def probe_rows(self, docs: list[np.ndarray]) -> np.ndarray:
        """One fortune a row, laid out as in training ([CLS] first iff the packing has it)."""
        return fortunes.pack_documents(docs, self.seq_len, cls=bool(self.config.data.get("cls",
                                                                                         True)))

    # ------------------------------------------------------------------------- evaluation
    def map_rows(self, fn, variables: Any, rows: dict[str, np.ndarray],
                 batch_size: int = 256) -> np.ndarray:
        """Σ over fixed-size batches of ``fn(variables, batch, batch_number) -> [k]`` (jitted, on
        the mesh); the last batch is padded with PAD rows, which ``fn`` must not count."""
        n_dev = num_batch_devices(self.mesh)
        batch_size = max(n_dev, batch_size // n_dev * n_dev)
        data = NamedSharding(self.mesh, P(batch_axes(self.mesh)))
        jfn = jax.jit(fn)
        n = len(rows["tokens"])
        total = None
        for i, start in enumerate(range(0, n, batch_size)):
            chunk = {}
            for k, v in rows.items():
                part = v[start:start + batch_size]
                pad = batch_size - len(part)
                chunk[k] = jax.device_put(
                    np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)]), data)
            out = np.asarray(jax.device_get(jfn(variables, chunk, jnp.int32(i))), np.float64)
            total = out if total is None else total + out
        return total

    @abc.abstractmethod
    def pretext_results(self, variables: Any, corpus: fortunes.TextCorpus) -> list[dict]:
        """The method's own held-out numbers (result dicts of ``jssl.train.run``)."""

    def evaluate(self, state, workdir: Path) -> tuple[list[dict], int]:
        corpus = fortunes.load_corpus(self.config.data)
        if jax.process_index() == 0:
            shutil.copyfile(corpus.tokenizer_path, Path(workdir) / "tokenizer.model")
        variables = {"params": state.params, **state.variables}
        results = self.pretext_results(variables, corpus)
        train_x, test_x = self.probe_rows(corpus.train_ids), self.probe_rows(corpus.test_ids)
        batch = {k: jnp.zeros(s.shape, s.dtype) for k, s in self.dummy_batch(2).items()}
        random_vars, random_extra = self.init(jax.random.key(self.config.seed + 1), batch)
        random_vars = jax.device_put(random_vars, NamedSharding(self.mesh, P()))
        ev = self.config.eval
        for name, v, extra in (("pretrained", variables, state.extra),
                               ("random init", random_vars, random_extra)):
            f_train = extract_features(self, v, extra, train_x, self.mesh)
            f_test = extract_features(self, v, extra, test_x, self.mesh)
            for frac in ev.label_fractions:
                out = linear_probe(f_train, corpus.train_labels, f_test, corpus.test_labels,
                                   num_classes=len(corpus.categories), label_fraction=frac,
                                   seed=self.config.seed)
                results.append({
                    "protocol": f"category linear probe, {name} ({frac:.0%} labels)",
                    "kind": "linear" if name == "pretrained" else "linear_random_init",
                    "label_fraction": float(frac), "accuracy": out["accuracy"],
                    "weight_decay": out["weight_decay"]})
        n_rows = len(fortunes.pack(corpus.train_ids, self.config.data, self.config.seed)["tokens"])
        return results, n_rows
