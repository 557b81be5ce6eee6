"""SimCLRv2 self-distillation: the loss against NumPy and its gradient identity, 1 vs 8
devices, and the method end to end (a frozen fine-tuned teacher, a student trained on every
image, results reported at the teacher's label fraction)."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharded_check import assert_sharded_equal
from test_engine import tiny_config  # tests/ is on sys.path

from jssl import losses
from jssl.train.checkpoint import Checkpointer
from jssl.train.loop import train
from jssl.train.run import run

pytestmark = pytest.mark.xdist_group("distill")


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_distillation_loss_matches_numpy_and_its_gradient_identity(tau):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(12, 7)).astype(np.float32) * 3
    t = rng.normal(size=(12, 7)).astype(np.float32) * 3
    p_t, p_s = _np_softmax(t.astype(np.float64) / tau), _np_softmax(s.astype(np.float64) / tau)
    want = np.mean(-np.sum(p_t * np.log(p_s), -1))
    value, (g_s, g_t) = jax.value_and_grad(
        lambda a, b: losses.knowledge_distillation(a, b, tau), argnums=(0, 1))(s, t)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    # d/ds of the mean cross-entropy: (P^S − P^T) / (τ B); the teacher gets no gradient.
    np.testing.assert_allclose(np.asarray(g_s), (p_s - p_t) / (tau * len(s)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(g_t), np.zeros_like(t))
    # Its minimum over the student is the teacher's entropy, reached at s = t.
    entropy = np.mean(-np.sum(p_t * np.log(p_t), -1))
    np.testing.assert_allclose(float(losses.knowledge_distillation(t, t, tau)), entropy,
                               rtol=1e-5)


def test_distillation_loss_is_the_same_on_1_and_8_devices():
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    assert_sharded_equal(losses.knowledge_distillation, (s, t), batch_argnums=(0, 1),
                         temperature=2.0)


def test_distillation_loss_rejects_bad_inputs():
    z = jnp.zeros((4, 10))
    with pytest.raises(ValueError, match=r"student_logits.*teacher_logits"):
        losses.knowledge_distillation(z, jnp.zeros((4, 9)))
    with pytest.raises(ValueError, match=r"temperature.*-1"):
        losses.knowledge_distillation(z, z, -1.0)
    with pytest.raises(ValueError, match=r"student_logits must be \[..., num_classes\]"):
        losses.knowledge_distillation(jnp.zeros(4), jnp.zeros(4))


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_ensemble_logits_give_the_mean_of_the_members_probabilities(tau):
    """softmax(ℓ/τ) is the mean of the members' tempered probabilities (Hinton et al. 2015),
    so the distillation loss against ℓ is the cross-entropy to that mean (NumPy)."""
    rng = np.random.default_rng(4)
    members = [rng.normal(size=(6, 5)).astype(np.float32) * 4 for _ in range(3)]
    s = rng.normal(size=(6, 5)).astype(np.float32)
    mean_p = np.mean([_np_softmax(t.astype(np.float64) / tau) for t in members], 0)
    ell = losses.ensemble_logits([jnp.asarray(t) for t in members], tau)
    np.testing.assert_allclose(_np_softmax(np.asarray(ell, np.float64) / tau), mean_p,
                               rtol=1e-5, atol=1e-7)
    want = np.mean(-np.sum(mean_p * np.log(_np_softmax(s.astype(np.float64) / tau)), -1))
    np.testing.assert_allclose(float(losses.knowledge_distillation(s, ell, tau)), want,
                               rtol=1e-5)
    one = losses.ensemble_logits([members[0]], tau)  # E = 1: the member's own probabilities
    np.testing.assert_allclose(_np_softmax(np.asarray(one, np.float64) / tau),
                               _np_softmax(members[0].astype(np.float64) / tau), atol=1e-6)
    with pytest.raises(ValueError, match=r"teacher_logits is empty"):
        losses.ensemble_logits([], tau)
    with pytest.raises(ValueError, match=r"teacher_logits\[0\].*teacher_logits\[1\]"):
        losses.ensemble_logits([members[0], members[1][:, :4]], tau)
    with pytest.raises(ValueError, match=r"temperature.*0"):
        losses.ensemble_logits(members, 0.0)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished tiny supervised run on half of the labels (the teacher)."""
    tmp = tmp_path_factory.mktemp("teacher")
    config = tiny_config(tmp, "supervised", **{"data.label_fraction": 0.5,
                                               "optim.warmup_steps": 0})
    train(config, tmp / "work")
    return tmp / "work"


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_the_student_learns_from_a_frozen_teacher_and_reports_its_labels(tmp_path,
                                                                         teacher_run):
    config = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    config.teacher_from = str(teacher_run)
    summary = run(config, tmp_path / "student")
    with Checkpointer(teacher_run, async_save=False) as ckpt:
        teacher = ckpt.restore().state
    with Checkpointer(tmp_path / "student", async_save=False) as ckpt:
        student = ckpt.restore().state
    # The teacher in the student's state is the fine-tuned run's, bit for bit, after 4 steps.
    for a, b in zip(_leaves(teacher["params"]), _leaves(student["extra"]["teacher"]["params"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(teacher["variables"]["batch_stats"]),
                    _leaves(student["extra"]["teacher"]["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The student trained: its classifier left zero.
    assert np.abs(_leaves(student["params"]["classifier"])[0]).max() > 0
    own = [r for r in summary["results"] if r["kind"] == "distill"]
    assert len(own) == 1 and own[0]["label_fraction"] == 0.5
    assert own[0]["protocol"] == "distilled from work (50% labels + unlabelled images)"
    assert 0.0 <= own[0]["accuracy"] <= 1.0
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").open()]
    assert all(0.0 <= m["teacher_agreement"] <= 1.0 for m in metrics if "teacher_agreement" in m)


def test_a_student_can_teach_a_second_round_at_the_first_teachers_labels(tmp_path,
                                                                         teacher_run):
    first = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    first.teacher_from = str(teacher_run)
    train(first, tmp_path / "round1")
    second = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    second.teacher_from = str(tmp_path / "round1")
    summary = run(second, tmp_path / "round2")
    with Checkpointer(tmp_path / "round1", async_save=False) as ckpt:
        round1 = ckpt.restore().state
    with Checkpointer(tmp_path / "round2", async_save=False) as ckpt:
        round2 = ckpt.restore().state
    for a, b in zip(_leaves(round1["params"]), _leaves(round2["extra"]["teacher"]["params"]),
                    strict=True):  # the teacher is the round-1 student, not its teacher
        np.testing.assert_array_equal(a, b)
    own = [r for r in summary["results"] if r["kind"] == "distill"]
    assert own[0]["label_fraction"] == 0.5  # the labels are still the first teacher's
    assert own[0]["protocol"] == "distilled from round1 (50% labels + unlabelled images)"
    # A chain that loops back on itself is refused with the path.
    loop_a, loop_b = tmp_path / "loop_a", tmp_path / "loop_b"
    for here, there in ((loop_a, loop_b), (loop_b, loop_a)):
        here.mkdir()
        (here / "config.json").write_text(json.dumps({"method": "distill",
                                                      "teacher_from": str(there)}))
    third = tiny_config(tmp_path, "distill")
    third.teacher_from = str(loop_a)
    with pytest.raises(ValueError, match=r"chain of teachers loops back to .*loop_a"):
        train(third, tmp_path / "round3")
    lost = tmp_path / "lost"  # a distilled run whose recorded teacher is gone
    lost.mkdir()
    (lost / "config.json").write_text(json.dumps({"method": "distill",
                                                  "teacher_from": str(tmp_path / "gone")}))
    third.teacher_from = str(lost)
    with pytest.raises(FileNotFoundError, match=r"whose own teacher .*gone.* has no config"):
        train(third, tmp_path / "round4")


def test_an_ensemble_teacher_holds_every_member_and_needs_one_label_subset(tmp_path,
                                                                          teacher_run):
    """--config.teacher_from=A,B: both fine-tuned runs sit in the student's state bit for bit;
    the student of an ensemble of A with itself is the student of A (the mean of equal
    probabilities is those probabilities); members fine-tuned on different label subsets are
    refused before anything is restored."""
    other = tiny_config(tmp_path, "supervised", **{"data.label_fraction": 0.5,
                                                   "optim.warmup_steps": 0,
                                                   "optim.base_lr": 0.05})
    train(other, tmp_path / "other")
    config = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    config.teacher_from = f"{teacher_run}, {tmp_path / 'other'}"
    summary = run(config, tmp_path / "ens")
    with Checkpointer(tmp_path / "ens", async_save=False) as ckpt:
        student = ckpt.restore().state
    for name, source in (("teacher", teacher_run), ("teacher_2", tmp_path / "other")):
        with Checkpointer(source, async_save=False) as ckpt:
            want = ckpt.restore().state
        for a, b in zip(_leaves(want["params"]), _leaves(student["extra"][name]["params"]),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    own = [r for r in summary["results"] if r["kind"] == "distill"]
    assert own[0]["label_fraction"] == 0.5
    assert own[0]["protocol"] == "distilled from work + other (50% labels + unlabelled images)"

    single = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    single.teacher_from = str(teacher_run)
    twice = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    twice.teacher_from = f"{teacher_run},{teacher_run}"
    a, _ = train(single, tmp_path / "single")
    b, _ = train(twice, tmp_path / "twice")
    for x, y in zip(_leaves(a.params), _leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)

    for i, record in enumerate(({"label_fraction": 0.25}, {"label_fraction": 0.5, "seed": 1})):
        fake = tmp_path / f"fake{i}"  # a fine-tuned run's record on another label subset
        fake.mkdir()
        (fake / "config.json").write_text(json.dumps(
            {"method": "supervised", "seed": record.pop("seed", 0), "data": record}))
        config.teacher_from = f"{teacher_run},{fake}"
        with pytest.raises(ValueError, match=r"the teachers learned from different label "
                                             r"subsets .*fine-tune every teacher with the same"):
            train(config, tmp_path / f"bad{i}")


def test_distill_refuses_a_missing_or_wrong_teacher_and_a_label_subset(tmp_path, teacher_run):
    config = tiny_config(tmp_path, "distill")
    with pytest.raises(ValueError, match=r"config.teacher_from=None: distillation needs"):
        train(config, tmp_path / "a")
    config.teacher_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config.teacher_from=.*has no config.json"):
        train(config, tmp_path / "b")
    ssl = tmp_path / "ssl"  # an SSL run's workdir: its config.json says so
    ssl.mkdir()
    (ssl / "config.json").write_text(json.dumps({"method": "simclr", "data": {}}))
    config.teacher_from = str(ssl)
    with pytest.raises(ValueError, match=r"is a 'simclr' run; the teacher must be"):
        train(config, tmp_path / "c")
    bad = tmp_path / "bad_record"  # a teacher whose config.json does not describe its weights
    shutil.copytree(teacher_run, bad)
    record = json.loads((bad / "config.json").read_text())
    record["model"]["encoder"]["widths"] = [8, 16, 32, 32]
    (bad / "config.json").write_text(json.dumps(record))
    config.teacher_from = str(bad)
    with pytest.raises(ValueError, match=r"config.teacher_from=.*(do not match|has shape)"):
        train(config, tmp_path / "d")
    config = tiny_config(tmp_path, "distill", **{"data.label_fraction": 0.1})
    config.teacher_from = str(teacher_run)
    with pytest.raises(ValueError, match=r"config.data.label_fraction=0.1: the student learns"):
        train(config, tmp_path / "e")


def test_a_student_may_be_smaller_than_its_teacher(tmp_path, teacher_run):
    """The teacher's network is built from its run's config.json, not from the student's
    config: a student with a narrower last stage (32 against the teacher's 64 channels)
    trains, its frozen teacher holds the run's weights, and the teacher's scores inside the
    student's state are the teacher run's own predictions."""
    from jssl.methods import get_method

    config = tiny_config(tmp_path, "distill", **{"optim.warmup_steps": 0})
    config.teacher_from = str(teacher_run)
    config.model.encoder.widths = (8, 16, 32, 32)
    state, method = train(config, tmp_path / "small")
    kernel = "kernel"
    student_classifier = state.params["classifier"]["linear"][kernel]
    teacher_classifier = state.extra["teacher"]["params"]["classifier"]["linear"][kernel]
    assert student_classifier.shape == (32, 10) and teacher_classifier.shape == (64, 10)
    with Checkpointer(teacher_run, async_save=False) as ckpt:
        saved = ckpt.restore().state
    for a, b in zip(_leaves(saved["params"]), _leaves(state.extra["teacher"]["params"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    own = json.loads((teacher_run / "config.json").read_text())
    own_config = tiny_config(tmp_path, "supervised", **{"data.label_fraction": 0.5})
    assert own["model"]["encoder"]["preset"] == own_config.model.encoder.preset
    teacher_method = get_method("supervised")(own_config, None)
    x = np.random.default_rng(5).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    want = teacher_method.predict({"params": saved["params"], **saved["variables"]}, {}, x)
    got = method.teacher_nets[0].apply(state.extra["teacher"], x, train=False)[1]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_a_clean_teacher_sees_the_whole_image_and_the_student_a_view(tmp_path):
    from jssl.methods.distill import Distill
    from jssl.train.mesh import make_mesh

    config = tiny_config(tmp_path, "distill")
    config.teacher_from = "unread-teacher-workdir"  # prepare never reads the teacher
    config.loss.teacher_view = "clean"
    method = Distill(config, make_mesh(config))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
             "label": np.zeros(16, np.int32)}
    out = jax.jit(method.prepare)(batch, jax.random.key(0))
    assert sorted(out) == ["teacher_views", "views"]
    np.testing.assert_allclose(np.asarray(out["teacher_views"]),
                               batch["image"].astype(np.float32) / 255.0, rtol=1e-6, atol=0)
    assert not np.allclose(np.asarray(out["views"]), np.asarray(out["teacher_views"]))
    config.loss.teacher_view = "same"
    assert sorted(jax.jit(Distill(config, make_mesh(config)).prepare)(
        batch, jax.random.key(0))) == ["views"]
    config.loss.teacher_view = "noisy"
    with pytest.raises(ValueError, match=r"config.loss.teacher_view='noisy' is unknown"):
        Distill(config, make_mesh(config))


def test_mixup_pairs_the_teachers_and_the_students_input_and_is_sharding_invariant(tmp_path):
    from jax.sharding import NamedSharding, PartitionSpec

    from jssl.methods.distill import Distill
    from jssl.train.mesh import make_mesh

    config = tiny_config(tmp_path, "distill")
    config.teacher_from = "unread-teacher-workdir"  # prepare never reads the teacher
    config.loss.teacher_view = "clean"
    rng = np.random.default_rng(1)
    batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
             "label": np.zeros(16, np.int32)}
    key = jax.random.key(3)
    plain = jax.jit(Distill(config, make_mesh(config)).prepare)(batch, key)
    config.loss.mixup = 1.0
    mesh = make_mesh(config)
    method = Distill(config, mesh)
    mixed = jax.jit(method.prepare)(batch, key)
    # λ_b from the clean images, which are known: tv = λ x + (1 − λ) x_rev
    x = batch["image"].astype(np.float64) / 255.0
    x_rev, tv = x[::-1], np.asarray(mixed["teacher_views"], np.float64)
    diff = (x - x_rev).reshape(16, -1)
    lam = np.sum((tv - x_rev).reshape(16, -1) * diff, 1) / np.sum(diff * diff, 1)
    np.testing.assert_allclose(tv, lam[:, None, None, None] * x
                               + (1 - lam[:, None, None, None]) * x_rev, atol=1e-6)
    assert np.all((lam >= 0) & (lam <= 1)) and np.std(lam) > 0.05
    # the student's views are the un-mixed views (same key) mixed with the same λ and partner
    v = np.asarray(plain["views"], np.float64)
    np.testing.assert_allclose(np.asarray(mixed["views"]), lam[:, None, None, None] * v
                               + (1 - lam[:, None, None, None]) * v[::-1], atol=1e-5)
    # the partner is the *global* batch reversed: the same on 8 devices as on one
    assert mesh.devices.size == 8
    sharded = {k: jax.device_put(a, NamedSharding(mesh, PartitionSpec("data")))
               for k, a in batch.items()}
    on_8 = jax.jit(method.prepare)(sharded, key)
    for name in mixed:
        np.testing.assert_allclose(np.asarray(on_8[name]), np.asarray(mixed[name]), atol=1e-6)
    config.loss.mixup = -0.5
    with pytest.raises(ValueError, match=r"config.loss.mixup=-0.5: .* use α > 0"):
        Distill(config, make_mesh(config))
