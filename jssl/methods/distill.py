"""Self-distillation on unlabelled images: SimCLRv2's third step (Chen et al. 2020b, §2).

SimCLRv2 is "pretrain without labels → fine-tune on the labelled few → distill". The
fine-tuned network becomes a fixed teacher that labels every training image, labelled or
not, with its class probabilities, and a student (the same backbone or another) is trained on them:

    teacher:  f_T = the fine-tuned run in ``config.teacher_from`` (encoder + classifier,
              BatchNorm in inference mode), frozen: it lives in the extra state, not in the
              trained params, and its logits carry a stop-gradient; it may itself be a
              distilled student (another round; the labels are still its first teacher's);
              several runs, comma-separated, make an ensemble teacher whose probabilities
              are the mean of theirs (Hinton et al. 2015), all fine-tuned on the same labels
    student:  f_S = an EncoderClassifier of ``config.model`` (the teachers' networks are
              built from their runs' own config.json, so they may be bigger or smaller); its
              encoder starts from ``config.init_from`` (the SSL run) when given, else from
              scratch; the classifier starts at zero
    view(x) = random resized crop + flip (as fine-tuning), one view seen by both networks;
              with ``loss.teacher_view="clean"`` the teacher sees the whole image instead
              (Noisy Student, Xie et al. 2020: an un-noised teacher, a noised student);
              with ``loss.mixup`` = α > 0 both networks see the mixed view
              λ_b·v_b + (1 − λ_b)·v_{B−1−b}, λ_b ~ Beta(α, α) per example, the partner the
              global batch reversed ("function matching", Beyer et al. 2022: the teacher is
              queried on the student's exact input, which mixup moves off the data)
    loss    = mean over the global batch of  −Σ_k P^T_k(v) · log softmax(f_S(v)/τ)_k,
              P^T = softmax(f_T(v)/τ), or (1/E) Σ_e softmax(f_T_e(v)/τ) for E teachers
              (eq. 2; τ = ``loss.temperature``, 1 in the paper), over every training image;
              the labels are not read

The only labels used are the teacher's (its run's ``data.label_fraction``), so the student's
own test accuracy is reported at that label fraction, next to fine-tuning and training from
scratch with the same labels (``docs/RESULTS.md``).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jssl import losses
from jssl.methods.supervised import EncoderClassifier, Supervised, kept_projector
from jssl.models.encoders import make_encoder
from jssl.models.heads import LinearClassifier
from jssl.train.pretrained import copy_tree, restore_run, saved_params, saved_variables

FLAG = "config.teacher_from"
#: what the teacher sees: the student's view ("same", SimCLRv2) or the whole un-augmented
#: image resized to the view size ("clean", the un-noised teacher of Noisy Student)
TEACHER_VIEWS = ("same", "clean")


def teacher_runs(teacher_from: str) -> list[str]:
    """The teachers' workdirs: ``config.teacher_from`` split at commas."""
    runs = [t.strip() for t in str(teacher_from).split(",") if t.strip()]
    if not runs:
        raise ValueError(f"{FLAG}={teacher_from!r}: distillation needs a teacher; pass "
                         f"--{FLAG}=WORKDIR of a fine-tuned run (or WORKDIR,WORKDIR,... for "
                         f"an ensemble)")
    return runs


def teacher_label_fraction(teacher_from: str) -> float:
    """The fraction of labels behind the teacher: ``data.label_fraction`` in its run's
    ``config.json`` for a supervised / fine-tuned run; for a distilled student (a second
    round, as Noisy Student iterates), that of the teacher *it* learned from, followed
    through the ``teacher_from`` its ``config.json`` records. For an ensemble, every
    member's labels must be the same subset (same fraction and seed), or it is refused."""
    subsets = {}
    for run in teacher_runs(teacher_from):
        for root in labelled_runs(run):
            subsets.setdefault((float(root.get("data", {}).get("label_fraction", 1.0)),
                                root.get("seed", 0)), run)
    if len(subsets) > 1:
        found = ", ".join(f"{run} (label_fraction {f}, seed {s})"
                          for (f, s), run in sorted(subsets.items()))
        raise ValueError(f"{FLAG}={teacher_from!r}: the teachers learned from different label "
                         f"subsets ({found}); together they would use more labels than any "
                         f"one: fine-tune every teacher with the same data.label_fraction and "
                         f"seed")
    return next(iter(subsets))[0]


def saved_config(run: str, chain: tuple[str, ...] = ()) -> dict:
    """The ``config.json`` of the teacher run ``run`` (a supervised, fine-tuned or distilled
    run), lists as tuples; ``chain``: the distilled runs that led here (for the message)."""
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        if chain:  # a link further down a chain of distilled runs
            raise FileNotFoundError(f"{FLAG}={chain[0]!r} is a distilled run whose own teacher "
                                    f"{run!r} (the teacher_from in "
                                    f"{os.path.join(chain[-1], 'config.json')}) has no "
                                    f"config.json; the labels behind it are read there: run "
                                    f"from the directory it was trained in")
        raise FileNotFoundError(f"{FLAG}={run!r} has no config.json; point it at the "
                                f"workdir of a finished fine-tuning run (jssl train "
                                f"--config=experiments/supervised.py:...) or distillation run")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f, object_pairs_hook=lambda pairs: {
            k: tuple(v) if isinstance(v, list) else v for k, v in pairs})
    method = saved.get("method")
    if method not in ("supervised", "distill"):
        raise ValueError(f"{FLAG}={run!r} is a {method!r} run; the teacher must be "
                         f"a supervised, fine-tuned or distilled run (method 'supervised' or "
                         f"'distill')")
    return saved


def labelled_runs(teacher_from: str, _seen: tuple[str, ...] = ()) -> list[dict]:
    """The saved configs of the supervised / fine-tuned runs whose labels are behind the
    teacher ``teacher_from`` (one workdir), following distilled runs' ``teacher_from``."""
    saved = saved_config(teacher_from, _seen)
    if saved["method"] == "supervised":
        return [saved]
    chain = (*_seen, os.path.normpath(teacher_from))
    roots = []
    for source in teacher_runs(saved.get("teacher_from") or ""):
        if os.path.normpath(source) in chain:
            raise ValueError(f"{FLAG}={teacher_from!r}: its chain of teachers loops back "
                             f"to {source!r}")
        roots += labelled_runs(source, chain)
    return roots


def teacher_net(run: str) -> EncoderClassifier:
    """The network of the teacher run ``run``, built from its own ``config.json`` (encoder,
    kept projector blocks, classes): a teacher may differ from the student (SimCLRv2
    distils big networks into small ones, and a small one into a bigger)."""
    saved = saved_config(run)
    if "encoder" not in saved.get("model", {}) or "num_classes" not in saved.get("eval", {}):
        raise ValueError(f"{FLAG}={run!r}: its config.json has no model.encoder or "
                         f"eval.num_classes to build the teacher from; point it at a jssl "
                         f"run's workdir")
    cfg = ml_collections.ConfigDict(saved)
    return EncoderClassifier(make_encoder(cfg.model.encoder),
                             LinearClassifier(cfg.eval.num_classes), kept_projector(cfg))


def mix(key: jax.Array, views: dict[str, jax.Array], alpha: float) -> dict[str, jax.Array]:
    """Mixup of every array in ``views`` ([B, ...], the global batch) with the batch
    reversed: ``λ_b·x_b + (1 − λ_b)·x_{B−1−b}``, one ``λ_b ~ Beta(α, α)`` per example shared
    by all arrays, so the teacher's and the student's inputs stay paired."""
    n = next(iter(views.values())).shape[0]
    lam = jax.random.beta(key, alpha, alpha, (n,))
    def blend(x: jax.Array) -> jax.Array:
        w = lam.reshape((n,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        return w * x + (1 - w) * jnp.flip(x, 0)
    return {name: blend(x) for name, x in views.items()}


class Distill(Supervised):
    name = "distill"

    def __init__(self, config: Any, mesh: jax.sharding.Mesh):
        super().__init__(config, mesh)
        source = config.get("teacher_from")
        if not source:
            raise ValueError(f"{FLAG}={source!r}: distillation needs a teacher; pass "
                             f"--{FLAG}=WORKDIR of a fine-tuned run")
        self.teachers = teacher_runs(source)
        #: extra-state names of the frozen teachers ("teacher" alone for one)
        self.teacher_names = ["teacher"] + [f"teacher_{i}" for i in
                                            range(2, len(self.teachers) + 1)]
        if float(config.data.get("label_fraction", 1.0)) != 1.0:
            raise ValueError(f"config.data.label_fraction={config.data.label_fraction}: the "
                             f"student learns from every training image (its labels are not "
                             f"read); keep 1.0 and give the teacher the labelled fraction")
        self.teacher_from = str(source)
        self.teacher_fraction: float | None = None  # read from the teacher runs in init
        self.temperature = float(config.loss.get("temperature", 1.0))
        self.teacher_view = config.loss.get("teacher_view", "same")
        if self.teacher_view not in TEACHER_VIEWS:
            raise ValueError(f"config.loss.teacher_view={self.teacher_view!r} is unknown; use "
                             f"'same' (SimCLRv2) or 'clean' (Noisy Student)")
        self.mixup = float(config.loss.get("mixup", 0.0))
        if not self.mixup >= 0.0:
            raise ValueError(f"config.loss.mixup={self.mixup}: it is mixup's Beta(α, α) "
                             f"parameter; use α > 0 (1.0: λ uniform) or 0 for no mixup")

    def init(self, key, batch):
        variables, _ = super().init(key, batch)
        # the labels behind the teachers (chains followed, one subset for all) first, then
        # each teacher's own network; its trained weights come in load_frozen
        self.teacher_fraction = teacher_label_fraction(self.teacher_from)
        self.teacher_nets = [teacher_net(run) for run in self.teachers]
        x = jnp.zeros((2, self.out_size, self.out_size, batch["image"].shape[-1]))
        return variables, {name: dict(net.init(key, x, train=False))
                           for name, net in zip(self.teacher_names, self.teacher_nets,
                                                strict=True)}

    def prepare(self, batch, key):
        out = {"views": super().prepare(batch, key)["views"]}  # the labels stay behind
        if self.teacher_view == "clean":
            images = self.images(batch)
            size = (images.shape[0], self.out_size, self.out_size, images.shape[-1])
            out["teacher_views"] = (images if images.shape == size
                                    else jax.image.resize(images, size, "bilinear"))
        if self.mixup > 0.0:
            out = mix(jax.random.fold_in(key, 1), out, self.mixup)
        return out

    def load_frozen(self, state: Any) -> Any:
        extra = dict(state.extra)
        for name, run in zip(self.teacher_names, self.teachers, strict=True):
            restored = restore_run(run, FLAG, "train the fine-tuned teacher first")
            saved = {"params": saved_params(restored), **saved_variables(restored)}
            extra[name] = {part: copy_tree(tree, saved[part], part, run, FLAG,
                                           model_key="encoder of the teacher's config.json")
                           for part, tree in state.extra[name].items()}
        return state.replace(extra=extra)

    def loss(self, params, variables, extra, batch, key, step):
        views = batch["views"]
        scores = [net.apply(extra[name], batch.get("teacher_views", views), train=False)[1]
                  for name, net in zip(self.teacher_names, self.teacher_nets, strict=True)]
        teacher_logits = (scores[0] if len(scores) == 1
                          else losses.ensemble_logits(scores, self.temperature))
        (_, logits), new_vars = self.net.apply({**variables, "params": params}, views,
                                               train=True, mutable=["batch_stats"])
        loss = losses.knowledge_distillation(logits, teacher_logits, self.temperature)
        agreement = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))
        return loss, ({"teacher_agreement": agreement}, dict(new_vars))

    def own_protocol(self) -> tuple[str, str, float]:
        frac = self.teacher_fraction
        names = " + ".join(os.path.basename(t.rstrip("/")) for t in self.teachers)
        return f"distilled from {names} ({frac:.0%} labels + unlabelled images)", "distill", frac
