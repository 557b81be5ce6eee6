"""BERT (Devlin et al. 2019) and RoBERTa (Liu et al. 2019): masked language modelling.

    for a minibatch of token rows x ([CLS] A [SEP] B [SEP] pairs, or packed full sentences):
        choose each non-special token with probability 0.15; of the chosen
            80 % → [MASK], 10 % → a random token, 10 % unchanged          (``bert_mask``)
        h = Transformer(x̃)                                  (post-LN encoder, dropout 0.1)
        L_MLM = Σ w · CE(W_E h + b, x) / Σ w                 (w = 1 at chosen positions)
        L = L_MLM + L_NSP                                    (NSP: [CLS] → IsNext/NotNext; BERT)

BERT's masks are *static*: fixed per training example (key = fold_in(seed key, example index))
as ``create_pretraining_data`` writes them once (its dupe_factor = 1). RoBERTa's are *dynamic*:
drawn on the device every step from the step key, so an example is masked anew each epoch; it
drops NSP and the segment embeddings and packs full sentences (``config.data.packing``).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jssl import losses
from jssl.data import fortunes
from jssl.losses.prediction import argmax_equals, token_cross_entropy, weighted_mean
from jssl.masking.text import bert_mask
from jssl.methods.text_base import TextMethod, model_kwargs
from jssl.models.bert import bert


class BERT(TextMethod):
    name = "bert"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        preset, m = model_kwargs(config)
        self.model = bert(preset, self.vocab_size, max_len=self.seq_len, **m)
        self.use_segments = self.model.type_vocab_size > 0
        if self.model.use_nsp and config.data.packing != "nsp_pairs":
            raise ValueError(f"config.model.use_nsp=True needs config.data.packing='nsp_pairs', "
                             f"got {config.data.packing!r}; set use_nsp=False (RoBERTa)")
        mk = config.masking
        self.mask_args = dict(vocab_size=self.vocab_size, mask_id=fortunes.MASK,
                              special_ids=fortunes.special_ids(self.num_sentinels),
                              rate=mk.rate, mask_replace_prob=mk.mask_replace_prob,
                              random_replace_prob=mk.random_replace_prob)
        self.dynamic = bool(mk.dynamic)

    def _apply(self, variables, batch, tokens, *, key=None, positions=None):
        seg = batch["segment_ids"] if self.use_segments and "segment_ids" in batch else None
        rngs = None if key is None else {"dropout": key}
        return self.model.apply(variables, tokens, seg, padding_mask=batch["tokens"]
                                != fortunes.PAD, mlm_positions=positions,
                                deterministic=key is None, rngs=rngs)

    def init(self, key, batch):
        seg = batch.get("segment_ids") if self.use_segments else None
        return dict(self.model.init(key, batch["tokens"], seg)), {}

    def mask(self, batch, key):
        """(inputs, labels, weights) of ``bert_mask``: one draw per step (dynamic) or one per
        example, keyed by its index (static)."""
        if self.dynamic:
            return bert_mask(batch["tokens"], key, **self.mask_args)
        base = jax.random.fold_in(jax.random.key(self.config.seed), 0x5747)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(batch["index"])
        return jax.vmap(lambda t, k: bert_mask(t, k, **self.mask_args))(batch["tokens"], keys)

    def prepare(self, batch, key):
        inputs, labels, weights = self.mask(batch, key)
        out = {"tokens": batch["tokens"], "inputs": inputs, "labels": labels, "weights": weights}
        for k in ("segment_ids", "nsp_label"):
            if k in batch:
                out[k] = batch[k]
        return out

    def predicted(self, batch):
        """(positions or None, labels, weights): with ``masking.max_predictions`` = P, the MLM
        head runs only at the first P chosen positions of each row (BERT's
        max_predictions_per_seq; chosen positions beyond P go unscored)."""
        p = self.config.masking.get("max_predictions")
        if p is None:
            return None, batch["labels"], batch["weights"]
        order = jnp.argsort(-batch["weights"], axis=1, stable=True)[:, :p]
        take = lambda x: jnp.take_along_axis(x, order, axis=1)  # noqa: E731
        return order, take(batch["labels"]), take(batch["weights"])

    def loss(self, params, variables, extra, batch, key, step):
        positions, labels, weights = self.predicted(batch)
        out = self._apply({**variables, "params": params}, batch, batch["inputs"], key=key,
                          positions=positions)
        mlm = losses.masked_lm(out["mlm_logits"], labels, weights)
        hit = argmax_equals(out["mlm_logits"], labels).astype(jnp.float32)
        metrics = {"mlm_loss": mlm, "mlm_acc": weighted_mean(hit, weights, None)}
        loss = mlm
        if self.model.use_nsp:
            nsp = losses.classification(out["nsp_logits"], batch["nsp_label"])
            loss = loss + self.config.loss.nsp_weight * nsp
            metrics["nsp_acc"] = jnp.mean(jnp.argmax(out["nsp_logits"], -1) == batch["nsp_label"])
        return loss, (metrics, {})

    def encode(self, variables, tokens):
        return self._apply(variables, {"tokens": tokens}, tokens)["hidden"]

    def pretext_results(self, variables, corpus):
        """Held-out MLM accuracy: test rows packed as in training, masked as in training with a
        fixed key per batch; accuracy = Σ w·[argmax = label] / Σ w over every masked token."""
        rows = fortunes.pack(corpus.test_ids, self.config.data, self.config.seed + 1)
        rows["index"] = np.arange(len(rows["tokens"]), dtype=np.int32)
        key = jax.random.key(self.config.seed + 2)

        def counts(variables, batch, i):
            inputs, labels, weights = self.mask(batch, jax.random.fold_in(key, i))
            logits = self._apply(variables, batch, inputs)["mlm_logits"]
            hit = argmax_equals(logits, labels).astype(jnp.float32)
            nll = token_cross_entropy(logits, labels)
            return jnp.stack([jnp.sum(hit * weights), jnp.sum(nll * weights), jnp.sum(weights)])

        hits, nll, n = self.map_rows(counts, variables, rows)
        return [{"protocol": "held-out MLM accuracy (15% masked, 80/10/10)",
                 "kind": "mlm_accuracy", "label_fraction": 1.0, "accuracy": hits / n,
                 "mlm_loss": nll / n, "masked_tokens": int(n)}]
