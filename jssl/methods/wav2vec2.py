"""wav2vec 2.0 (Baevski et al. 2020): contrastive prediction of quantized speech from context.

    for a minibatch of N waveforms x (16 kHz; each scaled to zero mean and unit variance):
        z  = f(x)                          feature encoder, strided 1-D convs: frames [N, T, C]
        M  = span_mask(p = 0.65, span = 10)    masked frames (≈ 49 %), drawn in ``prepare``
        c  = g(z, z_t ← mask embedding for t ∈ M)      transformer context, projected [N, T, D]
        q  = PQ(z)   product quantizer: G groups × V entries, Gumbel softmax at temperature
                     τ(step) = max(τ_end, τ_start · γ^step)   (2 → 0.5), straight-through
        L_m = mean_{t ∈ M} −log e^{cos(c_t, q_t)/κ} / Σ_{q̃ ∈ {q_t} ∪ Q_t} e^{cos(c_t, q̃)/κ}
              with K distractors Q_t drawn from the other masked frames of the same utterance
        L_d = (G·V − PPL(p̄)) / (G·V)             codebook diversity, p̄ = mean softmax over M
        L   = L_m + α·L_d + β·mean(z²)           (α = 0.1, β = 10: fairseq's loss_weights)
    optimiser: Adam(W) β (0.9, 0.98), ε 1e-6, weight decay 0.01, warm-up 8 % then decay

The network is ``jssl.models.wav2vec2.Wav2Vec2``, the losses ``jssl.losses.wav2vec2`` (run
through ``shard_map``: the distractors of a row depend on its *global* index, so 1 and N
devices agree) and the model's ``prob_perplexity`` (masked-frame mean over the global
batch). Frozen features for the probes: the transformer output (``hidden``) of the unmasked
waveform, mean over frames.

Evaluation (``evaluate``, run by ``jssl.train.run``): on the test split, the held-out
contrastive accuracy (positive ranked above all K distractors, masks of a fixed key) and the
codebook perplexity of the hard codes over all frames (out of G·V); then linear probes of
the class label with each fraction of ``config.eval.label_fractions`` on the features of the
pretrained model, of the same model randomly initialised, and of log-mel spectrograms
(``jssl.evaluate.logmel``: the whole [frames × 40] image, and its per-band mean and std).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl import losses
from jssl.data.speech import eval_arrays, open_split
from jssl.evaluate.features import extract_features
from jssl.evaluate.linear import linear_probe
from jssl.evaluate.logmel import logmel_features
from jssl.masking import span_mask
from jssl.methods.base import Method
from jssl.models.wav2vec2 import wav2vec2


def normalize(audio: jax.Array) -> jax.Array:
    """float32 waveforms scaled per row to zero mean and unit variance (ε = 1e-5)."""
    x = audio.astype(jnp.float32)
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5)


class Wav2Vec2(Method):
    name = "wav2vec2"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        enc = config.model.encoder.to_dict()
        enc.pop("name", None)
        if "conv_layers" in enc:
            enc["conv_layers"] = tuple(tuple(int(v) for v in layer)
                                       for layer in enc["conv_layers"])
        if "dtype" in enc:
            enc["dtype"] = jnp.dtype(enc["dtype"])
        self.model = wav2vec2(enc.pop("preset"), **enc)
        mp = config.method_params
        self.mask_prob, self.mask_span = float(mp.mask_prob), int(mp.mask_span)
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"config.method_params.mask_prob={self.mask_prob} must be in (0, 1);"
                             f" wav2vec 2.0 uses 0.65")
        self.frames = self.model.frames(int(config.data.crop))
        if self.mask_span > self.frames:
            raise ValueError(f"config.method_params.mask_span={self.mask_span} is longer than "
                             f"the {self.frames} frames of config.data.crop={config.data.crop}; "
                             f"use a shorter span or a longer crop")
        self.tau = (float(mp.gumbel_start), float(mp.gumbel_end), float(mp.gumbel_decay))
        self.alpha, self.beta = float(config.loss.diversity_weight), float(
            config.loss.feature_penalty)
        self.contrastive = self.shard(losses.wav2vec2, (0, 1, 2),
                                      num_negatives=int(config.loss.num_negatives),
                                      temperature=float(config.loss.temperature),
                                      return_metrics=True)

    def dummy_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of a training batch (for tracing without data)."""
        return {"audio": jax.ShapeDtypeStruct((batch_size, int(self.config.data.crop)),
                                              jnp.int16),
                "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def gumbel_temperature(self, step: jax.Array) -> jax.Array:
        start, end, decay = self.tau
        return jnp.maximum(end, start * jnp.power(decay, step.astype(jnp.float32)))

    def init(self, key, batch):
        x = jnp.zeros((2, int(self.config.data.crop)), jnp.float32)
        mask = jnp.zeros((2, self.frames), bool).at[:, 0].set(True)
        return dict(self.model.init({"params": key}, x, mask)), {}

    def prepare(self, batch, key):
        mask = span_mask(key, self.frames, self.mask_prob, self.mask_span, min_masks=2,
                         batch_size=batch["audio"].shape[0])
        return {"waveform": normalize(batch["audio"]), "mask": mask}

    def loss(self, params, variables, extra, batch, key, step):
        k_drop, k_gumbel, k_neg = jax.random.split(key, 3)
        tau = self.gumbel_temperature(step)
        out = self.model.apply({**variables, "params": params}, batch["waveform"],
                               batch["mask"], tau, train=True,
                               rngs={"dropout": k_drop, "gumbel": k_gumbel})
        contrastive, m = self.contrastive(out["context"].astype(jnp.float32),
                                          out["quantized"].astype(jnp.float32), batch["mask"],
                                          k_neg)
        gv = self.model.num_codevector_groups * self.model.num_codevectors
        diversity = (gv - out["prob_perplexity"]) / gv
        loss = contrastive + self.alpha * diversity + self.beta * out["features_penalty"]
        metrics = {"contrastive": contrastive, "accuracy": m["accuracy"],
                   "diversity": diversity, "features_penalty": out["features_penalty"],
                   "code_perplexity": out["code_perplexity"],
                   "prob_perplexity": out["prob_perplexity"], "gumbel_temperature": tau,
                   "mask_fraction": jnp.mean(batch["mask"].astype(jnp.float32))}
        return loss, (metrics, {})

    def features(self, variables, extra, audio):
        hidden = self.model.apply(variables, normalize(audio), None, train=False)["hidden"]
        return jnp.mean(hidden.astype(jnp.float32), axis=1)

    # ----------------------------------------------------------------------------- evaluation
    def held_out(self, variables: Any, audio: np.ndarray, batch_size: int = 256) -> list[dict]:
        """Contrastive accuracy (masks and distractors of a fixed key) and the perplexity of
        the hard codes over every frame of ``audio``."""
        g, v = self.model.num_codevector_groups, self.model.num_codevectors
        n_dev = self.mesh.devices.size
        batch_size = max(n_dev, batch_size // n_dev * n_dev)
        data = NamedSharding(self.mesh, P(self.axis_name))

        @jax.jit
        def one(variables, x, valid, key):
            mask = span_mask(jax.random.fold_in(key, 0), self.frames, self.mask_prob,
                             self.mask_span, min_masks=2, batch_size=x.shape[0])
            mask = mask & valid[:, None]
            out = self.model.apply(variables, normalize(x), mask, self.tau[1], train=False)
            _, m = self.contrastive(out["context"].astype(jnp.float32),
                                    out["quantized"].astype(jnp.float32), mask,
                                    jax.random.fold_in(key, 1))
            counts = jnp.sum(jax.nn.one_hot(out["codes"], v) * valid[:, None, None, None],
                             axis=(0, 1))
            return m["accuracy"] * m["count"], m["count"], counts

        hits = count = 0.0
        counts = np.zeros((g, v))
        for i, start in enumerate(range(0, len(audio), batch_size)):
            x = audio[start:start + batch_size]
            pad = batch_size - len(x)
            valid = np.arange(batch_size) < len(x)
            x = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
            h, c, k = jax.device_get(one(variables, jax.device_put(x, data),
                                         jax.device_put(valid, data),
                                         jax.random.key(self.config.seed + i)))
            hits, count, counts = hits + float(h), count + float(c), counts + np.asarray(k)
        p = counts / counts.sum(-1, keepdims=True)
        ppl = float(np.sum(np.exp(-np.sum(p * np.log(p + 1e-7), axis=-1))))
        return [{"protocol": "held-out contrastive accuracy (masked frames)", "kind": "pretext",
                 "accuracy": hits / max(count, 1.0)},
                {"protocol": f"held-out codebook perplexity (of {g * v})", "kind": "pretext",
                 "value": ppl}]

    def evaluate(self, state, workdir: Path) -> tuple[list[dict], int]:
        data, ev = self.config.data, self.config.eval
        train_x, train_y = eval_arrays(data, data.train_split)
        test_x, test_y = eval_arrays(data, data.test_split)
        variables = {"params": state.params, **state.variables}
        results = self.held_out(variables, test_x)
        random_vars, _ = self.init(jax.random.key(self.config.seed + 1), {})
        random_vars = jax.device_put(random_vars, NamedSharding(self.mesh, P()))
        feats = {name: (extract_features(self, v, {}, train_x, self.mesh),
                        extract_features(self, v, {}, test_x, self.mesh))
                 for name, v in (("pretrained", variables), ("random init", random_vars))}
        mel_train, mel_test = logmel_features(train_x), logmel_features(test_x)
        feats["log-mel, frames × 40 bands"] = (mel_train["flat"], mel_test["flat"])
        feats["log-mel, band mean + std"] = (mel_train["mean_std"], mel_test["mean_std"])
        kinds = {"pretrained": "linear", "random init": "linear_random_init",
                 "log-mel, frames × 40 bands": "linear_logmel_frames",
                 "log-mel, band mean + std": "linear_logmel_mean_std"}
        grid = {"weight_decays": tuple(ev.weight_decays)} if ev.get("weight_decays") else {}
        for name, (f_train, f_test) in feats.items():
            for frac in ev.label_fractions:
                out = linear_probe(f_train, train_y, f_test, test_y,
                                   num_classes=int(ev.num_classes), label_fraction=frac,
                                   seed=self.config.seed, **grid)
                results.append({"protocol": f"linear probe, {name} ({frac:.0%} labels)",
                                "kind": kinds[name],
                                "label_fraction": float(frac), "accuracy": out["accuracy"],
                                "weight_decay": out["weight_decay"]})
        # Epochs count the pretraining data: its own dataset when the probes read another.
        pretrain = len(open_split(data, data.train_split)) if data.get("eval_name") else len(
            train_y)
        return results, pretrain
