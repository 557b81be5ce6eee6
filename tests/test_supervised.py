"""The label-efficiency protocol: supervised from scratch on a labelled subset, fine-tuning
from an SSL run's encoder, ``--mode=eval`` / ``jssl eval``, and the generated RESULTS.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_engine import ROOT, tiny_config  # tests/ is on sys.path

from jssl.data.inputs import load_source, train_loader
from jssl.data.pipeline import label_subset
from jssl.data.subset import labelled_subset, source_labels
from jssl.evaluate import results_doc
from jssl.train.checkpoint import Checkpointer
from jssl.train.loop import train
from jssl.train.run import backbone, format_results, run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("supervised")


def test_loader_reads_exactly_the_class_balanced_labelled_subset(tmp_path):
    config = tiny_config(tmp_path, "supervised", **{"data.label_fraction": 0.5})
    source = load_source(config.data, "train")
    labels = source_labels(source)
    want = label_subset(labels, 0.5, seed=config.seed)
    assert len(want) == 100 and np.all(np.bincount(labels[want], minlength=10) == 10)
    subset = labelled_subset(source, 0.5, config.seed)
    assert len(subset) == 100
    # One epoch of the endless loader (100 records, batch 16, one process) covers the subset.
    images = {source[int(i)]["image"].tobytes(): int(i) for i in want}
    seen = []
    for _, batch in zip(range(6), iter(train_loader(config)), strict=False):
        seen += [images[im.tobytes()] for im in batch["image"]]  # KeyError: outside the subset
    assert len(set(seen)) == 96  # 6 batches of 16 distinct records of the first epoch
    with pytest.raises(ValueError, match=r"config.data.label_fraction=0.0 must be in \(0, 1\]"):
        labelled_subset(source, 0.0, 0)


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    """A finished tiny SimCLR run (the encoder to fine-tune)."""
    tmp = tmp_path_factory.mktemp("ssl")
    config = tiny_config(tmp, "simclr")
    train(config, tmp / "work")
    return tmp / "work", config


def _saved(workdir):
    with Checkpointer(workdir, async_save=False) as ckpt:
        return ckpt.restore().state


def test_finetuning_starts_from_the_ssl_encoder_and_a_zero_classifier(tmp_path, ssl_run):
    workdir, _ = ssl_run
    # lr 0: the one step taken leaves the initial params (checked below) as they were.
    config = tiny_config(tmp_path, "supervised", **{"train.steps": 1, "optim.warmup_steps": 0,
                                                    "optim.base_lr": 0.0})
    config.init_from = str(workdir)
    state, _ = train(config, tmp_path / "ft")
    saved = _saved(workdir)
    ssl_params = jax.device_get(saved["params"]["encoder"])
    new_params = jax.device_get(state.params["encoder"])
    for a, b in zip(jax.tree.leaves(ssl_params), jax.tree.leaves(new_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(ssl_params) == jax.tree.structure(new_params)
    kernel = np.asarray(jax.device_get(state.params["classifier"]["linear"]["kernel"]))
    np.testing.assert_array_equal(kernel, np.zeros_like(kernel))


def test_lp_ft_freezes_the_ssl_encoder_while_the_classifier_trains(tmp_path, ssl_run):
    """LP-FT's first phase: with freeze_pattern ^encoder/ for every step, the encoder's params
    stay the SSL run's bit for bit while the (zero-initialised) classifier moves; the
    encoder's BatchNorm statistics still update, as the preset's docstring says."""
    workdir, _ = ssl_run
    config = tiny_config(tmp_path, "supervised", **{"train.steps": 3, "optim.warmup_steps": 0})
    assert (config.optim.freeze_pattern, config.optim.freeze_steps) == ("", 0)  # off by default
    config.optim.freeze_pattern = "^encoder/"
    config.optim.freeze_steps = 3
    config.init_from = str(workdir)
    state, _ = train(config, tmp_path / "lp")
    saved = _saved(workdir)
    for a, b in zip(jax.tree.leaves(jax.device_get(saved["params"]["encoder"])),
                    jax.tree.leaves(jax.device_get(state.params["encoder"])), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = np.asarray(jax.device_get(state.params["classifier"]["linear"]["kernel"]))
    assert np.abs(kernel).max() > 0
    stats_before = jax.tree.leaves(jax.device_get(saved["variables"]["batch_stats"]["encoder"]))
    stats_after = jax.tree.leaves(jax.device_get(state.variables["batch_stats"]["encoder"]))
    assert any(not np.array_equal(a, b) for a, b in zip(stats_before, stats_after, strict=True))


def test_finetuning_from_the_first_projector_block_copies_it_and_computes_w_relu_bn(
        tmp_path, ssl_run):
    """SimCLRv2's fine-tuning from the middle of the head (keep_hidden = 1): the encoder and
    the projector's first Linear + BatchNorm come from the SSL run bit for bit, and the
    network computes logits = W·relu(BN(f(x)·W0)) + b (a NumPy reference on the state's
    own params and statistics, eval mode)."""
    from jssl.methods import get_method

    workdir, ssl_config = ssl_run
    config = tiny_config(tmp_path, "supervised", **{"train.steps": 1, "optim.warmup_steps": 0,
                                                    "optim.base_lr": 0.0})
    config.init_from = str(workdir)
    config.model.projector.hidden_dim = ssl_config.model.projector.hidden_dim
    config.model.projector.keep_hidden = 1
    assert backbone(config) == "resnet tiny (cifar stem) + 1 projector block (32)"
    state, method = train(config, tmp_path / "ft")
    saved = jax.device_get(_saved(workdir)["params"]["projector"])
    mine = jax.device_get(state.params["projector"])
    assert sorted(mine) == ["bn0", "linear0"] and "linear1" in saved
    for name in mine:
        for a, b in zip(jax.tree.leaves(saved[name]), jax.tree.leaves(mine[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    variables = {"params": state.params, **state.variables}
    x = np.random.default_rng(3).uniform(size=(5, 28, 28, 1)).astype(np.float32)
    h = np.asarray(method.net.encoder.apply(
        {"params": state.params["encoder"],
         "batch_stats": state.variables["batch_stats"]["encoder"]}, x, train=False), np.float64)
    stats = jax.device_get(state.variables["batch_stats"]["projector"]["bn0"])
    u = h @ np.asarray(mine["linear0"]["kernel"], np.float64)
    u = ((u - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * mine["bn0"]["scale"]
         + mine["bn0"]["bias"])
    z = np.maximum(u, 0.0)
    head = jax.device_get(state.params["classifier"]["linear"])
    features, logits = method.net.apply(variables, x, train=False)
    np.testing.assert_allclose(np.asarray(features), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), z @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-5)
    assert features.shape == (5, ssl_config.model.projector.hidden_dim)

    config.model.projector.keep_hidden = 2  # a 2-layer projector has one hidden block
    with pytest.raises(ValueError, match=r"config.model.projector.keep_hidden=2: a 2-layer "
                                         r"projector has 0..1 hidden blocks to keep"):
        get_method("supervised")(config, None)
    config.model.projector.keep_hidden = 1
    config.model.projector.hidden_dim = 2 * ssl_config.model.projector.hidden_dim
    with pytest.raises(ValueError, match=r"params\['projector'\].*has shape .* use the same "
                                         r"projector config as that run"):
        train(config, tmp_path / "ft2")


def test_finetuning_refuses_a_different_encoder(tmp_path, ssl_run):
    workdir, _ = ssl_run
    config = tiny_config(tmp_path, "supervised")
    config.init_from = str(workdir)
    config.model.encoder.widths = (8, 16, 32, 32)
    with pytest.raises(ValueError, match=r"do not match config.model.encoder|has shape"):
        train(config, tmp_path / "ft")
    config.init_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config.init_from=.*is not a directory"):
        train(config, tmp_path / "ft2")


def test_finetune_presets_follow_simclr_and_need_an_ssl_run(tmp_path):
    """SimCLR App. B.5: 60 epochs of the 1 % subset, 30 of the 10 %, Nesterov lr 0.05 × B/256,
    no regularisation; a fine-tuning preset without ``init_from`` is refused before compiling."""
    from test_engine import load_experiment

    exp = load_experiment(ROOT / "experiments" / "supervised.py")
    for preset, fraction, epochs in (("finetune_1pct", 0.01, 60), ("finetune_10pct", 0.1, 30)):
        c = exp.get_config(preset)
        assert c.data.label_fraction == fraction
        assert abs(c.train.steps * c.train.batch_size / (fraction * 60_000) - epochs) < 0.5
        assert (c.optim.nesterov, c.optim.base_lr, c.optim.weight_decay,
                c.optim.warmup_steps, c.loss.label_smoothing) == (True, 0.05, 0.0, 0, 0.0)
    c.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"config.init_from=None: the 'supervised_finetune_"
                                         r"10pct' preset fine-tunes an SSL run"):
        train(c, tmp_path / "ft")


def test_eval_mode_reproduces_the_trained_runs_numbers_and_needs_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path, "supervised", **{"data.label_fraction": 0.5})
    first = run(config, tmp_path / "w")
    kinds = {r["kind"] for r in first["results"]}
    assert kinds == {"scratch", "knn", "linear"}, kinds
    assert first["train_examples"] == 100 and first["epochs"] == pytest.approx(4 * 16 / 100)
    again = run(config, tmp_path / "w", mode="eval")
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in first["results"]]
    # restoring is not training: the run's own command, time and date stay in results.json
    saved = json.loads((tmp_path / "w" / "results.json").read_text())
    for key in ("command", "train_wall_s", "hardware", "date", "steps", "load_avg_1m"):
        assert saved[key] == first[key], key
    assert {"eval_command", "eval_hardware", "eval_date", "eval_load_avg_1m"} <= set(saved)
    # a run stopped before its evaluation (no results.json) is reported at the step its
    # checkpoint reached, not the config's, and without a training time
    (tmp_path / "w" / "results.json").unlink()
    config.train.steps = 2 * first["steps"]
    stopped = run(config, tmp_path / "w", mode="eval")
    assert stopped["steps"] == first["steps"] and stopped["train_wall_s"] is None
    assert stopped["epochs"] == pytest.approx(first["epochs"])
    assert "4 steps × batch 16 · evaluated, not trained here" in format_results(stopped)
    assert results_doc._train_time(stopped) == "–"
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint to evaluate"):
        run(config, tmp_path / "empty", mode="eval")


def test_jssl_eval_console_script_fails_clearly_without_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path, "supervised")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "jssl.cli", "eval", "--config=experiments/supervised.py:tiny",
         f"--workdir={tmp_path / 'empty'}", f"--config.data.idx_dir={config.data.idx_dir}",
         f"--config.data.data_dir={config.data.data_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "holds no checkpoint to evaluate" in out.stderr


# --------------------------------------------------------------------- RESULTS.md generator
def _run_record(config, method, backbone, results, fraction=1.0, init_from=None):
    return {"config": config, "method": method, "backbone": backbone, "epochs": 10.0,
            "train_wall_s": 600.0, "hardware": "2× cpu", "date": "2026-11-22",
            "command": f"python -m jssl.main --config=experiments/{method}.py",
            "label_fraction": fraction, "init_from": init_from, "results": results}


def test_results_doc_tables_and_label_efficiency_curves(tmp_path):
    lin = [{"kind": "linear", "label_fraction": f, "accuracy": a}
           for f, a in ((1.0, 0.86), (0.1, 0.84), (0.01, 0.78))]
    runs = [
        _run_record("simclr_a", "simclr", "resnet tiny",
                    lin + [{"kind": "knn", "k": 20, "label_fraction": 1.0, "accuracy": 0.85}]),
        _run_record("byol_a", "byol", "resnet tiny",
                    [{"kind": "linear", "label_fraction": 1.0, "accuracy": 0.80}]),
        # A better SSL run on another backbone: not on the curves (same backbone everywhere).
        _run_record("simclr_wide", "simclr", "resnet tiny_wide",
                    [{"kind": "linear", "label_fraction": 1.0, "accuracy": 0.95}]),
        *[_run_record(f"scratch_{f}", "supervised", "resnet tiny",
                      [{"kind": "scratch", "label_fraction": f, "accuracy": a}], fraction=f)
          for f, a in ((0.01, 0.70), (0.1, 0.82), (1.0, 0.91))],
        _run_record("ft_1", "supervised", "resnet tiny",
                    [{"kind": "finetune", "label_fraction": 0.01, "accuracy": 0.79}],
                    fraction=0.01, init_from="runs/simclr_a"),
        # Fine-tuned from a weaker SSL run: left out, the curve starts from the best one.
        _run_record("ft_byol", "supervised", "resnet tiny",
                    [{"kind": "finetune", "label_fraction": 0.01, "accuracy": 0.95}],
                    fraction=0.01, init_from="runs/byol_a/"),
    ]
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    for r in runs:
        (runs_dir / f"{r['config']}.json").write_text(json.dumps(r))
    loaded = results_doc.load_runs(runs_dir)
    baselines = {("linear", 1.0): 0.8435, ("linear", 0.01): 0.7778, ("knn20", 1.0): 0.8459}
    curves = results_doc.label_efficiency(loaded, baselines)
    assert curves["simclr_a + linear probe"] == {0.01: 0.78, 0.1: 0.84, 1.0: 0.86}
    assert curves["supervised from scratch"] == {0.01: 0.70, 0.1: 0.82, 1.0: 0.91}
    assert curves["simclr_a + fine-tuning"] == {0.01: 0.79}
    assert curves["raw pixels + logistic regression"] == {0.01: 0.7778, 1.0: 0.8435}
    table = results_doc.label_efficiency_table(curves)
    assert "| 1% | 78.00 | 79.00 | 70.00 | 77.78 |" in table
    runs_md = results_doc.runs_table(loaded, baselines)
    assert "| simclr_a | simclr | resnet tiny | 10.0 | 10.0 min | 86.00 | 85.00 | 78.00 | – | – |" \
        in runs_md
    assert "| scratch_0.01 | supervised, 1% labels |" in runs_md
    doc = "# R\nprose\n<!-- table:runs -->\nold\n<!-- /table:runs -->\nmore prose\n"
    new = results_doc.render(doc, {"runs": "NEW"})
    assert new == "# R\nprose\n<!-- table:runs -->\nNEW\n<!-- /table:runs -->\nmore prose\n"
    with pytest.raises(ValueError, match=r"no <!-- table:other -->"):
        results_doc.render(doc, {"other": "x"})


def test_label_efficiency_backbone_tie_goes_to_the_better_ssl_probe():
    """Equal numbers of supervised runs on two backbones: the curves use the backbone whose
    best SSL probe is higher, whatever the order of the files."""
    runs = [
        _run_record("ssl_tiny", "simclr", "resnet tiny",
                    [{"kind": "linear", "label_fraction": 1.0, "accuracy": 0.83}]),
        _run_record("ssl_wide", "simclr", "resnet tiny_wide",
                    [{"kind": "linear", "label_fraction": 1.0, "accuracy": 0.87}]),
        *[_run_record(f"scratch_{b}", "supervised", f"resnet {b}",
                      [{"kind": "scratch", "label_fraction": 1.0, "accuracy": a}])
          for b, a in (("tiny", 0.86), ("tiny_wide", 0.88))],
    ]
    for order in (runs, runs[::-1]):
        curves = results_doc.label_efficiency(order, {})
        assert curves == {"ssl_wide + linear probe": {1.0: 0.87},
                          "supervised from scratch": {1.0: 0.88}}


def test_label_efficiency_backbone_with_more_label_fractions_comes_first():
    """Three from-scratch fractions on one backbone beat four runs at one fraction on the
    other; every backbone with supervised runs gets its own curves."""
    scratch = [{"kind": "scratch", "label_fraction": 1.0, "accuracy": 0.9}]
    runs = [*[_run_record(f"tiny_{i}", "supervised", "resnet tiny", scratch) for i in range(4)],
            *[_run_record(f"wide_{f}", "supervised", "resnet tiny_wide",
                          [{"kind": "scratch", "label_fraction": f, "accuracy": f}], fraction=f)
              for f in (0.01, 0.1, 1.0)],
            _run_record("ssl_tiny", "simclr", "resnet tiny",
                        [{"kind": "linear", "label_fraction": 1.0, "accuracy": 0.99}])]
    assert results_doc.backbones_by_evidence(runs) == ["resnet tiny_wide", "resnet tiny"]
    # A fine-tuned run with nothing to compare it with on its backbone (no SSL or
    # from-scratch run) gets no table of its own.
    lone = _run_record("ft_head", "supervised", "resnet tiny + 1 projector block (32)",
                       [{"kind": "finetune", "label_fraction": 0.01, "accuracy": 0.5}], 0.01,
                       init_from="runs/ssl_tiny")
    assert results_doc.backbones_by_evidence([*runs, lone]) == ["resnet tiny_wide",
                                                                "resnet tiny"]
    assert results_doc.label_efficiency(runs, {}) == {
        "supervised from scratch": {0.01: 0.01, 0.1: 0.1, 1.0: 1.0}}
    assert results_doc.label_efficiency(runs, {}, "resnet tiny") == {
        "ssl_tiny + linear probe": {1.0: 0.99}, "supervised from scratch": {1.0: 0.9}}


def test_recorded_results_md_is_up_to_date():
    """docs/RESULTS.md equals what `jssl results` generates from docs/results/*.json."""
    assert results_doc.main(check=True) == 0


def test_label_efficiency_distillation_curve_follows_the_teacher_chain():
    """A distilled student's number sits at its teacher's label fraction, on a curve named
    after the SSL run its teacher was fine-tuned from (the best SSL run's chain preferred);
    a distilled run is not an SSL run (never the "best probe")."""
    runs = [
        _run_record("ssl_best", "simclr", "resnet w",
                    [{"kind": "linear", "label_fraction": 0.01, "accuracy": 0.80},
                     {"kind": "linear", "label_fraction": 1.0, "accuracy": 0.88}]),
        _run_record("ssl_other", "byol", "resnet w",
                    [{"kind": "linear", "label_fraction": 1.0, "accuracy": 0.70}]),
        _run_record("scratch_1", "supervised", "resnet w",
                    [{"kind": "scratch", "label_fraction": 0.01, "accuracy": 0.75}], 0.01),
        _run_record("ft_best", "supervised", "resnet w",
                    [{"kind": "finetune", "label_fraction": 0.01, "accuracy": 0.81}], 0.01,
                    init_from="runs/ssl_best"),
        _run_record("ft_other", "supervised", "resnet w",
                    [{"kind": "finetune", "label_fraction": 0.01, "accuracy": 0.77}], 0.01,
                    init_from="runs/ssl_other"),
        # The student's own linear probe is higher than every SSL run's: still not "best".
        {**_run_record("student_other", "distill", "resnet w",
                       [{"kind": "distill", "label_fraction": 0.01, "accuracy": 0.90},
                        {"kind": "linear", "label_fraction": 1.0, "accuracy": 0.99}]),
         "teacher_from": "runs/ft_other/"},
    ]
    curves = results_doc.label_efficiency(runs, {})
    assert curves["ssl_best + linear probe"] == {0.01: 0.80, 1.0: 0.88}
    assert curves["ssl_other + fine-tuning + distillation"] == {0.01: 0.90}
    student = {**_run_record("student_best", "distill", "resnet w",
                             [{"kind": "distill", "label_fraction": 0.01, "accuracy": 0.85}]),
               "teacher_from": "runs/ft_best"}
    curves = results_doc.label_efficiency([*runs, student], {})
    assert list(curves) == ["ssl_best + linear probe", "ssl_best + fine-tuning",
                            "ssl_best + fine-tuning + distillation", "supervised from scratch"]
    assert curves["ssl_best + fine-tuning + distillation"] == {0.01: 0.85}
    # A second round (its teacher is student_best) counts on the same chain; a student of an
    # unrecorded teacher does not.
    round2 = {**_run_record("student_round2", "distill", "resnet w",
                            [{"kind": "distill", "label_fraction": 0.01, "accuracy": 0.87}]),
              "teacher_from": "runs/student_best"}
    orphan = {**_run_record("student_orphan", "distill", "resnet w",
                            [{"kind": "distill", "label_fraction": 0.01, "accuracy": 0.95}]),
              "teacher_from": "runs/unrecorded"}
    curves = results_doc.label_efficiency([*runs, student, round2, orphan], {})
    assert curves["ssl_best + fine-tuning + distillation"] == {0.01: 0.87}
    row = results_doc.runs_table([student], {}).splitlines()[-1]
    assert row.startswith("| student_best | distill, 1% labels (the teacher's) | resnet w |")
    assert "| 85.00 | – |" in row  # the student's own classifier
    # An ensemble student counts when every teacher is recorded, on a curve named after all
    # their SSL runs; one with an unrecorded member does not.
    ensemble = {**_run_record("student_ens", "distill", "resnet w",
                              [{"kind": "distill", "label_fraction": 0.01, "accuracy": 0.89}]),
                "teacher_from": "runs/ft_best, runs/ft_other/"}
    half = {**_run_record("student_half", "distill", "resnet w",
                          [{"kind": "distill", "label_fraction": 0.01, "accuracy": 0.99}]),
            "teacher_from": "runs/ft_best,runs/unrecorded"}
    curves = results_doc.label_efficiency([*runs, student, round2, orphan, ensemble, half], {})
    assert "ssl_best + fine-tuning + distillation" not in curves
    assert curves["ssl_best / ssl_other + fine-tuning + distillation"] == {0.01: 0.89}
