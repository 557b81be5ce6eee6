"""GPT (Radford et al. 2018, 2019): next-token prediction with a causal decoder.

    for a minibatch of rows x of the training stream  d0 [SEP] d1 [SEP] ...  (packed, no CLS):
        logits = Decoder(x)                                 (causal mask: t attends to ≤ t)
        L = Σ_{b,t} m · CE(logits_{b,t}, x_{b,t+1}) / Σ m   (m: both tokens are not padding)

Held-out perplexity exp(L) is reported next to a unigram and a bigram model counted on the
same tokenization (``jssl.evaluate.ngram``). ``generate_text`` samples fortunes from a
checkpoint (``jssl generate``): a prompt follows [SEP] (a fortune's start) and the sample stops
at the next [SEP].
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jssl import losses
from jssl.data import fortunes
from jssl.evaluate.ngram import ngram_perplexities
from jssl.losses.prediction import argmax_equals, token_cross_entropy, weighted_mean
from jssl.methods.text_base import TextMethod, model_kwargs
from jssl.models.gpt import gpt


class GPT(TextMethod):
    name = "gpt"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        preset, m = model_kwargs(config)
        self.model = gpt(preset, vocab_size=self.vocab_size, max_len=self.seq_len, **m)

    def init(self, key, batch):
        return dict(self.model.init(key, batch["tokens"])), {}

    def loss(self, params, variables, extra, batch, key, step):
        tokens = batch["tokens"]
        logits = self.model.apply({**variables, "params": params}, tokens, deterministic=False,
                                  rngs={"dropout": key})
        mask = tokens != fortunes.PAD
        loss = losses.next_token(logits, tokens, mask)
        hit = argmax_equals(logits[:, :-1], tokens[:, 1:]).astype(jnp.float32)
        acc = weighted_mean(hit, mask[:, :-1] & mask[:, 1:], None)
        return loss, ({"next_token_acc": acc}, {})

    def encode(self, variables, tokens):
        _, state = self.model.apply(variables, tokens, capture_intermediates=lambda mdl, _: (
            mdl.name == "decoder"), mutable=["intermediates"])
        return state["intermediates"]["decoder"]["__call__"][0]

    def pretext_results(self, variables, corpus):
        """Held-out perplexity of the test fortunes packed like training, and the baselines."""
        cls = bool(self.config.data.get("cls", False))
        test = fortunes.pack_contiguous(corpus.test_ids, self.seq_len, cls)
        train = fortunes.pack_contiguous(corpus.train_ids, self.seq_len, cls)

        def nll_sum(variables, batch, i):
            tokens = batch["tokens"]
            logits = self.model.apply(variables, tokens)
            m = (tokens != fortunes.PAD).astype(jnp.float32)
            w = m[:, :-1] * m[:, 1:]
            ce = token_cross_entropy(logits[:, :-1], tokens[:, 1:])
            return jnp.stack([jnp.sum(ce * w), jnp.sum(w)])

        nll, n = self.map_rows(nll_sum, variables, {"tokens": test})
        base = ngram_perplexities(train, test, self.vocab_size, pad_id=fortunes.PAD)
        out = [{"protocol": "held-out perplexity, GPT", "kind": "perplexity",
                "label_fraction": 1.0, "value": float(np.exp(nll / n)), "tokens": int(n)}]
        for name in ("unigram", "bigram"):
            out.append({"protocol": f"held-out perplexity, {name} baseline",
                        "kind": f"perplexity_{name}", "label_fraction": 1.0,
                        "value": base[name], "tokens": int(n)})
        out[-1]["alpha"] = base["bigram_alpha"]
        return out

    def sample(self, params: Any, prompt: np.ndarray, key: jax.Array, max_new_tokens: int,
               temperature: float, top_k: int | None) -> np.ndarray:
        """``GPT.generate`` jitted (static length and top-k) → int32 [B, P + max_new_tokens]."""
        fn = jax.jit(functools.partial(self.model.generate, max_new_tokens=max_new_tokens,
                                       top_k=top_k))
        return np.asarray(fn(params, jnp.asarray(prompt, jnp.int32), key,
                             temperature=temperature))


def load_run_config(workdir: str | os.PathLike, config: Any = None) -> Any:
    """``config`` or the run's own ``workdir/config.json``."""
    if config is not None:
        return config
    import ml_collections

    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"--workdir={str(workdir)!r} has no config.json; pass --config "
                                "or train there first")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def generate_text(workdir: str | os.PathLike, prompts: list[str], *, config: Any = None,
                  max_new_tokens: int = 48, temperature: float = 0.8, top_k: int | None = 40,
                  num_samples: int = 1, seed: int = 0) -> list[list[str]]:
    """Samples [prompt][sample] from the newest checkpoint of a GPT run in ``workdir``.

    Same ``seed`` → same text (the key is ``jax.random.key(seed)``, folded with the prompt).
    """
    from jssl.train.loop import train

    config = load_run_config(workdir, config)
    if config.method != "gpt":
        raise ValueError(f"jssl generate needs a GPT run; {workdir} holds config.method="
                         f"{config.method!r}")
    state, method = train(config, workdir, restore_only=True)
    tok_path = Path(workdir) / "tokenizer.model"
    tok = (fortunes.load_tokenizer(tok_path) if tok_path.exists()
           else fortunes.load_corpus(config.data).tokenizer)
    out = []
    for i, text in enumerate(prompts):
        ids = [fortunes.SEP, *tok.encode(text)]
        if len(ids) + max_new_tokens > method.seq_len:
            raise ValueError(f"prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} "
                             f"exceeds seq_len={method.seq_len}; shorten one of them")
        prompt = np.tile(np.asarray(ids, np.int32), (num_samples, 1))
        key = jax.random.fold_in(jax.random.key(seed), i)
        rows = method.sample(state.params, prompt, key, max_new_tokens, temperature, top_k)
        samples = []
        for row in rows[:, len(ids):].tolist():
            end = row.index(fortunes.SEP) if fortunes.SEP in row else len(row)
            samples.append(tok.decode(ids[1:] + row[:end]))
        out.append(samples)
    return out
