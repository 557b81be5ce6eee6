"""word2vec's two embedding tables (Mikolov et al. 2013, "Distributed Representations of Words
and Phrases and their Compositionality").

``input`` holds the word vectors v_w (the representation kept after training; initialised
uniform in ±0.5/D as in the C tool), ``output`` the context vectors u_w (initialised to 0).
``__call__(centers [...], contexts [...], negatives [..., K])`` returns the logits
``u_o · v_c`` [...] and ``u_k · v_c`` [..., K].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class SkipGram(nn.Module):
    vocab_size: int
    dim: int = 100

    def setup(self) -> None:
        self.input = self.param("input", _uniform(0.5 / self.dim), (self.vocab_size, self.dim))
        self.output = self.param("output", nn.initializers.zeros, (self.vocab_size, self.dim))

    def __call__(self, centers: jax.Array, contexts: jax.Array,
                 negatives: jax.Array) -> tuple[jax.Array, jax.Array]:
        v = self.input[centers]                                  # [..., D]
        pos = jnp.sum(v * self.output[contexts], axis=-1)        # [...]
        neg = jnp.einsum("...d,...kd->...k", v, self.output[negatives])
        return pos, neg

    def embed(self, tokens: jax.Array) -> jax.Array:
        """The word vectors v of ``tokens`` [...] → [..., D]."""
        return self.input[tokens]
