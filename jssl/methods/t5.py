"""T5 (Raffel et al. 2020): span corruption with an encoder–decoder.

    for a minibatch of raw rows x of the training stream  d0 [SEP] d1 [SEP] ...  (no CLS),
    each ``t5_raw_length(inputs_length)`` tokens long so the corrupted inputs fill the model:
        drop 15 % of the tokens in spans of mean length 3 (``t5_span_corruption``):
            inputs  = x with each dropped span replaced by one sentinel, then EOS
            targets = each sentinel followed by the tokens it replaced, then EOS
        logits = Decoder(shift_right(targets) | Encoder(inputs))      (teacher forcing)
        L = Σ_{b,t} m · CE(logits_bt, targets_bt) / Σ m                (m: targets != PAD)

The corruption is drawn on the device every step from the step key. Sentinels are the
tokenizer's ``<extra_id_i>`` pieces (``config.data.num_sentinels`` of them, id
``fortunes.sentinel_start - i``); [SEP] is the EOS and [PAD] (0) the decoder's start id, as
in T5. Probe features are the encoder's output, mean-pooled over the non-padding tokens.
Held-out numbers: span-corruption loss, perplexity and target-token accuracy (every target
token counts: sentinels and EOS too, as T5's own token accuracy) on the test fortunes, packed
and corrupted as in training with a fixed key.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jssl import losses
from jssl.data import fortunes
from jssl.losses.prediction import argmax_equals, token_cross_entropy
from jssl.masking.text import _t5_counts, t5_span_corruption
from jssl.methods.text_base import TextMethod, model_kwargs
from jssl.models.t5 import T5 as T5Model
from jssl.models.t5 import shift_right, t5


class T5(TextMethod):
    name = "t5"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        preset, m = model_kwargs(config)
        self.model = t5(preset, vocab_size=self.vocab_size, **m)
        mk = config.masking
        self.noise_density, self.mean_span = float(mk.noise_density), float(mk.mean_span_length)
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"config.masking.noise_density={self.noise_density} must be in "
                             f"(0, 1); T5 uses 0.15")
        spans = _t5_counts(self.seq_len, self.noise_density, self.mean_span)[1]
        if spans > self.num_sentinels:
            raise ValueError(
                f"config.data.num_sentinels={self.num_sentinels} is fewer than the {spans} "
                f"noise spans of a {self.seq_len}-token row; set num_sentinels >= {spans}")

    def corrupt(self, tokens: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(inputs, targets) of ``t5_span_corruption``, one key per row."""
        return t5_span_corruption(tokens, key, self.noise_density, self.mean_span,
                                  sentinel_start=fortunes.sentinel_start(self.num_sentinels),
                                  pad_id=fortunes.PAD, eos_id=fortunes.SEP)

    def logits(self, variables, inputs, targets, *, key=None) -> jax.Array:
        """Teacher-forced decoder logits [B, T, V] aligned with ``targets``."""
        dec_in = shift_right(targets, fortunes.PAD)
        rngs = None if key is None else {"dropout": key}
        return self.model.apply(variables, inputs, dec_in, inputs != fortunes.PAD,
                                targets != fortunes.PAD, deterministic=key is None, rngs=rngs)

    def init(self, key, batch):
        inputs, targets = self.corrupt(batch["tokens"], key)
        return dict(self.model.init(key, inputs, shift_right(targets, fortunes.PAD))), {}

    def prepare(self, batch, key):
        inputs, targets = self.corrupt(batch["tokens"], key)
        return {"tokens": batch["tokens"], "inputs": inputs, "targets": targets}

    def loss(self, params, variables, extra, batch, key, step):
        targets = batch["targets"]
        logits = self.logits({**variables, "params": params}, batch["inputs"], targets, key=key)
        mask = targets != fortunes.PAD
        loss = losses.span_corruption(logits, targets, mask)
        hit = argmax_equals(logits, targets) & mask
        return loss, ({"target_acc": jnp.sum(hit) / jnp.maximum(jnp.sum(mask), 1)}, {})

    def encode(self, variables, tokens):
        return self.model.apply(variables, tokens, tokens != fortunes.PAD, method=T5Model.encode)

    def pretext_results(self, variables, corpus):
        rows = fortunes.pack(corpus.test_ids, self.config.data, self.config.seed + 1)
        key = jax.random.key(self.config.seed + 2)

        def counts(variables, batch, i):
            inputs, targets = self.corrupt(batch["tokens"], jax.random.fold_in(key, i))
            logits = self.logits(variables, inputs, targets)
            real = jnp.any(batch["tokens"] != fortunes.PAD, axis=1, keepdims=True)  # not filler
            m = ((targets != fortunes.PAD) & real).astype(jnp.float32)
            hit = argmax_equals(logits, targets).astype(jnp.float32)
            nll = token_cross_entropy(logits, targets)
            return jnp.stack([jnp.sum(hit * m), jnp.sum(nll * m), jnp.sum(m)])

        hits, nll, n = self.map_rows(counts, variables, {"tokens": rows["tokens"]})
        return [{"protocol": "held-out span corruption: target-token accuracy "
                             f"({self.noise_density:.0%} noise, mean span {self.mean_span:g})",
                 "kind": "span_accuracy", "label_fraction": 1.0, "accuracy": hits / n,
                 "span_loss": nll / n, "target_tokens": int(n),
                 "perplexity": float(np.exp(nll / n))}]
