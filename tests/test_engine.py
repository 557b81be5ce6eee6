"""The engine end to end: jssl.main on test-made data, exact resume after a kill,
1-vs-8-device step equivalence, every preset traces, bad configs fail early."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from engine_data import tiny_overrides
from step_check import SMOOTH_RESNET, assert_same_update

from jssl.methods import get_method
from jssl.train.checkpoint import Checkpointer
from jssl.train.loop import validate
from jssl.train.mesh import make_mesh
from jssl.train.optim import make_optimizer
from jssl.train.state import create_state, make_train_step

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


def load_experiment(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(tmp: Path, experiment: str = "simclr", **extra):
    config = load_experiment(ROOT / "experiments" / f"{experiment}.py").get_config("tiny")
    for key, value in {**tiny_overrides(tmp), **extra}.items():
        section, field = key.rsplit(".", 1)
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_data")


def _main(workdir: Path, data_root: Path, *flags: str, **popen) -> subprocess.Popen:
    ov = tiny_overrides(data_root)
    cmd = [sys.executable, "-m", "jssl.main", "--config=experiments/simclr.py:tiny",
           f"--workdir={workdir}", f"--config.data.idx_dir={ov['data.idx_dir']}",
           f"--config.data.data_dir={ov['data.data_dir']}", *flags]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _final_state(workdir: Path):
    with Checkpointer(workdir, async_save=False) as ckpt:
        return ckpt.restore()


def test_tiny_preset_trains_and_evaluates_through_main(tmp_path, data_root):
    proc = _main(tmp_path / "run", data_root)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    protocols = [r["protocol"] for r in results["results"]]
    assert protocols == ["kNN (k=5, T=0.07)", "linear probe (100% labels)"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["results"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "simclr"
    for png in ("curves.png", "embedding.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_after_kill_is_bitwise_exact(tmp_path, data_root):
    flags = ("--config.train.steps=6", "--config.train.log_every=1", "--config.checkpoint.every=1",
             "--config.checkpoint.async_save=False", "--mode=train")
    straight = _main(tmp_path / "straight", data_root, *flags)
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out[-3000:]

    killed = _main(tmp_path / "killed", data_root, *flags)
    for line in killed.stdout:  # kill -9 once step 3 has been logged
        if line.startswith("step 3/6"):
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(timeout=600)
    assert killed.returncode == -signal.SIGKILL
    partial = _final_state(tmp_path / "killed")
    assert 1 <= partial.step < 6
    resumed = _main(tmp_path / "killed", data_root, *flags)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]

    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "killed")
    assert a.step == b.step == 6
    leaves_a, leaves_b = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The data order is part of the state: both iterators stopped at the same record.
    assert a.data_state is not None and a.data_state == b.data_state


def test_sigterm_saves_and_exits_without_evaluating(tmp_path, data_root):
    """SIGTERM (preemption): the step in flight finishes, a checkpoint is saved, the process
    exits with a message and no results.json; the same command then resumes and finishes."""
    flags = ("--config.train.steps=40", "--config.train.log_every=1",
             "--config.checkpoint.every=1000", "--config.checkpoint.async_save=False")
    job = _main(tmp_path / "w", data_root, *flags)
    for line in job.stdout:
        if line.startswith("step 2/40"):
            job.send_signal(signal.SIGTERM)
            break
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 1 and "preempted (signal 15) at step" in out, out[-3000:]
    assert not (tmp_path / "w" / "results.json").exists()
    saved = _final_state(tmp_path / "w").step
    assert 2 <= saved < 40
    resumed = _main(tmp_path / "w", data_root, *flags)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert (tmp_path / "w" / "results.json").exists() and f"resumed from step {saved}" in out


def _build(config, devices, batch):
    """(initial state, train step, method) of ``config`` on a mesh over ``devices``."""
    config = config.copy_and_resolve_references()
    mesh = make_mesh(config, devices=devices)
    method = get_method(config.method)(config, mesh)
    tx, _, _ = make_optimizer(config.optim, global_batch=config.train.batch_size,
                              total_steps=config.train.steps)
    state, shardings = create_state(method, tx, jax.random.key(0), batch, mesh)
    return state, make_train_step(method, tx, mesh, shardings), method


def _prepared(config, devices, batch):
    """The inputs ``prepare`` makes on a mesh over ``devices`` (no optimizer step compiled)."""
    state, step, _ = _build(config, devices, batch)
    return jax.device_get(step.prepare(state.rng, state.step, batch))


def _one_step(config, devices, batch, inputs=None):
    """(params after one step, loss, prepared inputs); ``inputs`` overrides ``prepare``."""
    state, step, _ = _build(config, devices, batch)
    prepared = step.prepare(state.rng, state.step, batch)
    if inputs is not None:
        prepared = jax.tree.map(lambda x, y: jax.device_put(y, x.sharding), prepared, inputs)
    new, metrics = step.update(state, prepared)
    return jax.device_get(new.params), float(metrics["loss"]), jax.device_get(prepared)


def assert_same_step(config, batch, one, eight, zero_grad: tuple[str, ...] = ()) -> None:
    """(params, loss) after one step on 1 and on 8 devices agree (each leaf to 1e-5 of its
    own step, ``step_check``), and the step moved the params (else the comparison says
    nothing).

    ``zero_grad``: substrings of param paths whose exact gradient is 0 (an attention key
    bias: softmax is invariant to a shift shared by all keys). Their float gradient is
    rounding noise, which Adam scales up (toward a full step of random sign), so on both
    meshes they are only required to move less than 25 % of the largest move of the others
    (a real gradient makes Adam move a param by about the full step).
    """
    (p1, l1), (p8, l8) = one, eight
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    p0 = jax.device_get(_build(config, jax.devices()[:1], batch)[0].params)
    moved = assert_same_update(p0, p1, p8, skip=zero_grad)
    assert max(moved) > 1e-4, moved
    flat = [(jax.tree_util.keystr(path), a, b, c) for (path, a), b, c in zip(
        jax.tree_util.tree_flatten_with_path(p1)[0], jax.tree.leaves(p8), jax.tree.leaves(p0),
        strict=True)]
    zero = [f for f in flat if any(z in f[0] for z in zero_grad)]
    for name, a, b, c in zero:
        assert max(np.max(np.abs(a - c)), np.max(np.abs(b - c))) < 0.25 * max(moved), name


def test_one_simclr_step_is_the_same_on_1_and_8_devices(tmp_path):
    """Views made on 8 devices equal those made on 1 (to the last float bit), and on the
    same inputs one optimizer step gives the same params on 1 and 8 devices."""
    config = tiny_config(tmp_path, **SMOOTH_RESNET)  # no ReLU kinks (step_check)
    config.optim.warmup_steps = 0  # a warm-up would make the first step's lr 0
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
             "label": np.arange(16, dtype=np.int32) % 10}
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, inputs8 = _one_step(config, jax.devices(), batch, inputs=inputs1)
    views8 = _prepared(config, jax.devices(), batch)
    np.testing.assert_allclose(views8["views"], inputs1["views"], rtol=0, atol=1e-6)
    assert_same_step(config, batch, (p1, l1), (p8, l8))


PRESETS = [(p, name) for p in EXPERIMENTS for name in load_experiment(p).PRESETS]


@pytest.mark.parametrize("path, preset", PRESETS, ids=[f"{p.stem}:{n}" for p, n in PRESETS])
def test_every_preset_builds_and_traces_on_8_devices(path, preset, tmp_path):
    config = load_experiment(path).get_config(preset)
    if "tokenizer" in config:  # BEiT: shapes only, no trained tokenizer run to read
        config.tokenizer.untrained_ok = True
    if config.method == "distill":  # shapes only: the teacher's network from its config.json
        teacher = config.to_dict()
        teacher.update(method="supervised", teacher_from=None)
        (tmp_path / "config.json").write_text(json.dumps(teacher))
        config.teacher_from = str(tmp_path)
    mesh = make_mesh(config)
    method = get_method(config.method)(config, mesh)
    validate(config, mesh)
    tx, _, _ = make_optimizer(config.optim, global_batch=config.train.batch_size,
                              total_steps=config.train.steps)
    size = config.augment.size if "augment" in config else 28
    channels = 3 if size > 28 else 1
    batch = {"image": jax.ShapeDtypeStruct((config.train.batch_size, size, size, channels),
                                           jnp.uint8),
             "label": jax.ShapeDtypeStruct((config.train.batch_size,), jnp.int32)}
    if hasattr(method, "dummy_batch"):  # token-sequence methods (jssl.methods.text_base)
        batch = method.dummy_batch(config.train.batch_size)

    def init_and_step(key, batch):
        variables, extra = method.init(key, batch)
        params = variables.pop("params")
        inputs = method.prepare(batch, key)
        loss, _ = method.loss(params, variables, extra, inputs, key, jnp.int32(0))
        return loss, tx.init(params)

    loss, _ = jax.eval_shape(init_and_step, jax.random.key(0), batch)
    assert loss.shape == () and loss.dtype == jnp.float32


@pytest.mark.parametrize("field, value, match", [
    ("train.batch_size", 12, r"batch_size=12 is not divisible by the 8 devices"),
    ("train.grad_accum_steps", 4, r"grad_accum_steps=4: gradient accumulation would shrink"),
    ("train.steps", 0, r"config.train.steps=0 must be > 0"),
])
def test_bad_config_fails_before_compiling(tmp_path, field, value, match):
    config = tiny_config(tmp_path)
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        validate(config, make_mesh(config))


def test_unknown_method_and_unwritable_workdir(tmp_path):
    with pytest.raises(ValueError, match=r"config.method='simclrr' is unknown"):
        get_method("simclrr")
    from jssl.train.loop import check_workdir

    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ValueError, match=r"--workdir=.* is not writable"):
        check_workdir(blocked / "sub")


def test_workdir_check_is_safe_when_processes_probe_at_once(tmp_path):
    """All processes of a multi-process run check the same workdir at the same moment (a shared
    probe name once made one process fail with "not writable (No such file or directory)")."""
    from concurrent.futures import ThreadPoolExecutor

    from jssl.train.loop import check_workdir

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: check_workdir(tmp_path / "run"), range(400)))
    assert set(paths) == {tmp_path / "run"} and list((tmp_path / "run").iterdir()) == []
