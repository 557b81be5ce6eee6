"""Unsupervised SimCSE (Gao et al. 2021): dropout is the only augmentation.

    for a minibatch of N texts x (one fortune a row):
        z  = g(f(x; dropout mask 1)),  z' = g(f(x; dropout mask 2))   (two passes, two keys)
        L  = NT-Xent(z, z'; T = 0.05)                                 (in-batch negatives)

f is a BERT encoder (dropout 0.1), g its pooler (dense + tanh on [CLS]; SimCSE trains with
this MLP and drops it at test time). Negatives are gathered across every device
(``self.shard(losses.nt_xent)``). Deviation: NT-Xent also counts the same-view embeddings as
negatives (2N - 2 per anchor) where SimCSE's loss uses only the N - 1 other-view ones.
Frozen features for the probes are the mean-pooled encoder output, as for BERT.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jssl import losses
from jssl.data import fortunes
from jssl.methods.text_base import TextMethod, model_kwargs
from jssl.models.bert import bert


class SimCSE(TextMethod):
    name = "simcse"
    uses_batch_negatives = True

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        preset, m = model_kwargs(config)
        self.model = bert(preset, self.vocab_size, max_len=self.seq_len, **m)
        self.nt_xent = self.shard(losses.nt_xent, (0, 1), temperature=config.loss.temperature,
                                  impl=config.loss.get("impl", "gather"))

    def _apply(self, variables, tokens, key=None):
        # One dummy MLM position: the (unused) MLM head costs nothing.
        return self.model.apply(variables, tokens, padding_mask=tokens != fortunes.PAD,
                                mlm_positions=jnp.zeros((tokens.shape[0], 1), jnp.int32),
                                deterministic=key is None,
                                rngs=None if key is None else {"dropout": key})

    def init(self, key, batch):
        return dict(self.model.init(key, batch["tokens"])), {}

    def loss(self, params, variables, extra, batch, key, step):
        k1, k2 = jax.random.split(key)
        v = {**variables, "params": params}
        z1 = self._apply(v, batch["tokens"], k1)["pooled"]
        z2 = self._apply(v, batch["tokens"], k2)["pooled"]
        loss = self.nt_xent(z1, z2)
        cos = jnp.sum(z1 * z2, -1) / (jnp.linalg.norm(z1, axis=-1) * jnp.linalg.norm(z2, axis=-1))
        return loss, ({"view_cosine": jnp.mean(cos)}, {})

    def encode(self, variables, tokens):
        return self._apply(variables, tokens)["hidden"]

    def pretext_results(self, variables, corpus):
        return []
