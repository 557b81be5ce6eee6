"""word2vec skip-gram with negative sampling (Mikolov et al. 2013), on SentencePiece tokens.

    for a minibatch of rows of the training stream  d0 [SEP] d1 [SEP] ...  (no CLS):
        subsample: keep token w with probability min(1, √(t/f_w) + t/f_w)  (f_w: training
            frequency; the C tool's formula), dropping the others from the row before windowing
        for each kept centre c: window b ~ U{1..W}; contexts o = the kept tokens within b
            positions in the same fortune (windows stop at [SEP], the C tool's sentence end)
        for each (c, o): K negatives n_k ~ P(w) ∝ count(w)^0.75
        ℓ(c, o) = −log σ(u_o·v_c) − Σ_k log σ(−u_{n_k}·v_c)
        L = Σ m·ℓ / Σ m  over all (c, o) pairs of the global batch (m: valid pair)

Pairs, subsampling and negatives are drawn on the device every step from the step key at
static shapes ([B, L, 2W] pairs, masked). "Words" are the tokenizer's pieces. Deviations
from the C tool: negatives equal to the context are not redrawn, and the lr schedule is the
config's (AdamW by default) rather than SGD decaying linearly from 0.025.

Evaluation (besides the category probes of ``TextMethod`` on mean-pooled word vectors), the
issue's sanity check: among frequent pieces, the most strongly co-occurring held-out pairs
(highest PMI within 2 positions) should be nearest neighbours (cosine of v) far more often
than random pairs of frequent pieces.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jssl.data import fortunes
from jssl.losses.prediction import weighted_mean
from jssl.methods.text_base import TextMethod
from jssl.models.word2vec import SkipGram


def keep_probability(counts: np.ndarray, t: float) -> np.ndarray:
    """The C tool's subsampling: P(keep w) = min(1, √(t/f) + t/f), f = count / total."""
    f = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.sqrt(t / f) + t / f
    return np.where(counts > 0, np.minimum(p, 1.0), 1.0) if t > 0 else np.ones_like(f)


def subsample(key: jax.Array, tokens: jax.Array, keep_p: np.ndarray) -> jax.Array:
    """Bool [B, L]: token w kept with probability ``keep_p[w]`` (independently)."""
    return jax.random.uniform(key, tokens.shape) < jnp.asarray(keep_p)[tokens]


def skipgram_pairs(tokens: jax.Array, keep: jax.Array, window: jax.Array, max_window: int,
                   ignore: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(centres, contexts, mask), each [B, L, 2W]: the kept tokens (``keep`` [B, L] bool) are
    moved to the front of their row (order kept); pair (c, o) is valid when o is within
    ``window`` [B, L] (of the compacted centre) of c, in the same fortune, and neither is in
    ``ignore``."""
    sep = jnp.cumsum(tokens == fortunes.SEP, axis=1)            # fortune index
    valid = keep & ~jnp.isin(tokens, jnp.asarray(ignore))
    order = jnp.argsort(~valid, axis=1, stable=True)
    toks, seg = (jnp.take_along_axis(x, order, axis=1) for x in (tokens, sep))
    n = jnp.sum(valid, axis=1, keepdims=True)
    length = tokens.shape[1]
    pos = jnp.arange(length)[None, :]
    offsets = [d for d in range(-max_window, max_window + 1) if d != 0]
    ctx, mask = [], []
    for d in offsets:
        j = pos + d
        ok = (j >= 0) & (j < n) & (pos < n) & (abs(d) <= window)
        jj = jnp.broadcast_to(jnp.clip(j, 0, length - 1), toks.shape)
        ok &= jnp.take_along_axis(seg, jj, axis=1) == seg
        ctx.append(jnp.take_along_axis(toks, jj, axis=1))
        mask.append(ok)
    contexts, mask = jnp.stack(ctx, -1), jnp.stack(mask, -1)
    return jnp.broadcast_to(toks[..., None], contexts.shape), contexts, mask


class Word2Vec(TextMethod):
    name = "word2vec"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        w = config.word2vec
        for field, value in (("word2vec.window", w.window), ("word2vec.negatives", w.negatives),
                             ("model.encoder.dim", config.model.encoder.dim)):
            if int(value) < 1:
                raise ValueError(f"config.{field}={value} must be >= 1")
        if not float(w.subsample) >= 0:
            raise ValueError(f"config.word2vec.subsample={w.subsample} must be >= 0 (0: off; "
                             f"the paper uses 1e-5 on billions of words)")
        self.window, self.negatives = int(w.window), int(w.negatives)
        self.model = SkipGram(self.vocab_size, int(config.model.encoder.dim))
        self.ignore = fortunes.special_ids(self.num_sentinels)
        self.piece_counts = counts = self.counts()
        noise = counts ** 0.75
        noise[list(self.ignore)] = 0.0
        cdf = np.cumsum(noise)
        self.noise_cdf = (cdf / cdf[-1]).astype(np.float32)
        self.keep_p = keep_probability(counts, float(w.subsample)).astype(np.float32)

    def counts(self) -> np.ndarray:
        """Piece counts of the training split (fortunes), or the SentencePiece unigram model's
        probabilities of ``data.tokenizer_path`` (TFDS text); uniform only when neither is
        available (building and tracing a preset without its data)."""
        data = self.config.data
        if data.name == "fortunes":
            ids = np.concatenate(fortunes.load_corpus(data).train_ids)
            return np.bincount(ids, minlength=self.vocab_size).astype(np.float64)
        if data.get("tokenizer_path"):
            tok = fortunes.load_tokenizer(data.tokenizer_path)
            return np.exp([tok.get_score(i) for i in range(self.vocab_size)])
        return np.ones(self.vocab_size)

    def init(self, key, batch):
        z = jnp.zeros((2,), jnp.int32)
        return dict(self.model.init(key, z, z, jnp.zeros((2, self.negatives), jnp.int32))), {}

    def prepare(self, batch, key):
        tokens = batch["tokens"]
        k_keep, k_win, k_neg = jax.random.split(key, 3)
        keep = subsample(k_keep, tokens, self.keep_p)
        window = jax.random.randint(k_win, tokens.shape, 1, self.window + 1)
        centres, contexts, mask = skipgram_pairs(tokens, keep, window, self.window, self.ignore)
        # Inverse-CDF draws (the C tool's unigram table, exactly): O(draws) memory, where
        # jax.random.categorical would make Gumbel noise for every (draw, vocabulary entry).
        u = jax.random.uniform(k_neg, (*contexts.shape, self.negatives))
        negatives = jnp.searchsorted(jnp.asarray(self.noise_cdf), u, side="right")
        return {"centres": centres, "contexts": contexts, "mask": mask,
                "negatives": jnp.minimum(negatives, self.vocab_size - 1).astype(jnp.int32)}

    def loss(self, params, variables, extra, batch, key, step):
        pos, neg = self.model.apply({**variables, "params": params}, batch["centres"],
                                    batch["contexts"], batch["negatives"])
        per_pair = jax.nn.softplus(-pos) + jnp.sum(jax.nn.softplus(neg), axis=-1)
        m = batch["mask"]
        acc = (pos > 0) & jnp.all(neg < 0, axis=-1)
        return weighted_mean(per_pair, m, None), (
            {"pairs": jnp.sum(m), "pair_acc": weighted_mean(acc.astype(jnp.float32), m, None)},
            {})

    def encode(self, variables, tokens):
        return self.model.apply(variables, tokens, method=SkipGram.embed)

    def vectors(self, variables) -> np.ndarray:
        return np.asarray(jax.device_get(variables["params"]["input"]), np.float64)

    def pretext_results(self, variables, corpus):
        from jssl.evaluate.neighbours import cooccurrence_check

        out = cooccurrence_check(self.vectors(variables), corpus.test_ids, self.piece_counts,
                                 self.ignore, seed=self.config.seed)
        return [{"protocol": f"held-out top-PMI pairs among the {out['k']} nearest neighbours "
                             f"(random frequent pairs: {out['random_rate']:.2%})",
                 "kind": "neighbour_rate", "label_fraction": 1.0, "accuracy": out["pmi_rate"],
                 **out}]


def neighbours(workdir: str, words: list[str], k: int = 10):
    """[(word, its pieces, [(piece, cosine)] * k)] from a run's ``tokenizer.model`` and newest
    checkpoint; a word of several pieces is the mean of their vectors."""
    from pathlib import Path

    from jssl.train.checkpoint import Checkpointer

    path = Path(workdir) / "tokenizer.model"
    if not path.exists():
        raise ValueError(f"--workdir={workdir} has no tokenizer.model; pass a finished word2vec "
                         f"run's workdir")
    tok = fortunes.load_tokenizer(path)
    with Checkpointer(workdir, async_save=False) as ckpt:
        restored = ckpt.restore()
    if restored is None:
        raise ValueError(f"--workdir={workdir} holds no checkpoint; train it first")
    vectors = np.asarray(restored.state["params"]["input"], np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    import json

    sentinels = json.loads((Path(workdir) / "config.json").read_text())["data"].get(
        "num_sentinels", 0)
    special = set(fortunes.special_ids(sentinels))
    out = []
    for word in words:
        ids = tok.encode(word)
        query = unit[ids].mean(0)
        sims = unit @ (query / max(np.linalg.norm(query), 1e-12))
        ranked = [i for i in np.argsort(-sims, kind="stable")
                  if i not in ids and i not in special and i != fortunes.MASK][:k]
        out.append((word, [tok.id_to_piece(i) for i in ids],
                    [(tok.id_to_piece(int(i)), float(sims[i])) for i in ranked]))
    return out
