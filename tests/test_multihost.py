"""Multi-host training tested on one machine: 2 processes x 4 CPU devices against 1 x 8.

The global batches do not depend on the process count (``jssl.data.sampler``), so SimCLR's
``tiny`` preset trained by 2 processes must match 1 process to float tolerance (collectives
sum in another order across processes), checkpoints must move between the two, and a killed
process must stop its peer within the heartbeat timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from engine_data import tiny_overrides

from jssl.data.host_transforms import RandomResizedCrop
from jssl.data.pipeline import ArraySource, iterator_state, make_loader, restore_iterator
from jssl.train.checkpoint import Checkpointer

# One pytest-xdist worker runs this whole module: its runs are timed against heartbeats.
pytestmark = pytest.mark.xdist_group("multihost")
ROOT = Path(__file__).resolve().parent.parent
STEPS = 4
# No warm-up and a small lr (peak 0.01 x 16 / 256): every step moves the params, but the
# untrained tiny ResNet does not amplify the float rounding of collectives past 1e-5 (at the
# preset's lr 0.3 the 2-process loss drifts by 4e-4 relative by step 4).
FLAGS = ("--mode=train", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
         "--config.checkpoint.every=1", "--config.checkpoint.async_save=False",
         f"--config.checkpoint.keep={STEPS}", "--config.optim.warmup_steps=0",
         "--config.optim.base_lr=0.01")


# ----------------------------------------------------------------------------- the sampler

class _Recording(ArraySource):
    """An ``ArraySource`` that remembers which records were read."""

    def __init__(self, **arrays):
        super().__init__(**arrays)
        self.read: list[int] = []

    def __getitem__(self, index):
        self.read.append(int(index))
        return super().__getitem__(index)


def _source(n: int = 40) -> _Recording:
    ids = np.arange(n)
    images = np.broadcast_to(ids[:, None, None, None], (n, 4, 4, 1)).astype(np.uint8)
    return _Recording(image=images, label=ids)


def _loader(source, count: int, index: int, **kw):
    crop = RandomResizedCrop(size=4, num_views=2, scale=(0.3, 1.0), dtype="uint8")
    return make_loader(source, global_batch_size=8, seed=4, process_index=index,
                       process_count=count, transforms=(crop,), **kw)


def _assert_reads_only_own_rows(count: int, n: int = 1000) -> None:
    """Within one epoch (n records) every record a process reads, read-ahead included, is in
    its rows [p*L, (p+1)*L) of the 1-process global batches."""
    order = np.concatenate([b["label"] for b in _loader(_source(n), 1, 0, num_epochs=1)])
    rows = order.reshape(-1, count, 8 // count)
    for p in range(count):
        source = _source(n)
        it = iter(_loader(source, count, p, num_epochs=1))
        for _ in range(3):
            next(it)
        assert len(source.read) >= 3 * 8 // count
        assert set(source.read) <= set(rows[:, p].reshape(-1))


def test_global_batches_do_not_depend_on_process_count():
    """Batch s of process p is rows [p*8/P, (p+1)*8/P) of the 1-process batch s: the same
    records, order and random crops; each process reads only those; states move across P."""
    steps = 12  # 96 records of a 40-record source: crosses two epoch boundaries
    one = iter(_loader(_source(), 1, 0))
    want = [next(one) for _ in range(steps)]
    ids = np.concatenate([w["label"] for w in want])
    for epoch in range(2):  # each epoch is a permutation of the source, reshuffled
        np.testing.assert_array_equal(np.sort(ids[40 * epoch:40 * (epoch + 1)]), np.arange(40))
    assert not np.array_equal(ids[:40], ids[40:80])
    for count in (2, 4):
        sources = [_source() for _ in range(count)]
        iterators = [iter(_loader(src, count, p)) for p, src in enumerate(sources)]
        for s in range(steps):
            got = [next(it) for it in iterators]
            for key in ("label", "views"):
                np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[s][key])
        _assert_reads_only_own_rows(count)
        # A state saved after 5 batches by process 1 of `count` restores into P = 1 and P = 4.
        saved = _loader(_source(), count, 1)
        it = iter(saved)
        for _ in range(5):
            next(it)
        state = iterator_state(it)
        for new_count in (1, 4):
            resumed = [restore_iterator(_loader(_source(), new_count, p), state)
                       for p in range(new_count)]
            for s in range(5, 8):
                got = np.concatenate([next(r)["label"] for r in resumed])
                np.testing.assert_array_equal(got, want[s]["label"])


def test_iterator_state_is_process_independent_and_checked():
    states = []
    for count in (1, 2):
        for p in range(count):
            it = iter(_loader(_source(), count, p))
            for _ in range(3):
                next(it)
            states.append(iterator_state(it))
    assert len(set(states)) == 1 and json.loads(states[0])["global_batches"] == 3
    other_seed = make_loader(_source(), global_batch_size=8, seed=5, process_index=0,
                             process_count=1)
    with pytest.raises(ValueError, match="Sampler in checkpoint does not match"):
        restore_iterator(other_seed, states[0])
    with pytest.raises(ValueError, match="no 'global_batches'"):
        restore_iterator(other_seed, b'{"last_seen_indices": {"0": 3}}')


def test_grain_workers_keep_the_global_order():
    """With 2 grain worker processes (batches taken from them in turn) process 1 of 2 still
    reads rows [4, 8) of the 0-worker, 1-process batches, and a state restores in place."""
    want = [next(it)["label"][4:] for it in [iter(_loader(_source(), 1, 0))] for _ in range(6)]
    it = iter(_loader(_source(), 2, 1, worker_count=2))
    for s in range(3):
        np.testing.assert_array_equal(next(it)["label"], want[s])
    resumed = restore_iterator(_loader(_source(), 2, 1, worker_count=2), iterator_state(it))
    for s in range(3, 6):
        np.testing.assert_array_equal(next(resumed)["label"], want[s])


# ----------------------------------------------------------------------------- processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(data overrides, environment): tiny data and a compilation cache shared by the runs."""
    root = tmp_path_factory.mktemp("multihost")
    overrides = tiny_overrides(root)
    environ = {**os.environ, "JAX_PLATFORMS": "cpu",
               "JAX_COMPILATION_CACHE_DIR": str(root / "xla_cache"),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return overrides, environ


def _launch(env, workdir: Path, processes: int, *extra: str) -> list[subprocess.Popen]:
    """``python -m jssl.main`` as ``processes`` processes of 8 // processes CPU devices; the
    output of process p goes to ``p.log_path`` (files, so no process blocks on a full pipe)."""
    overrides, environ = env
    environ = {**environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
    cmd = [sys.executable, "-m", "jssl.main", "--config=experiments/simclr.py:tiny",
           f"--workdir={workdir}", f"--config.data.idx_dir={overrides['data.idx_dir']}",
           f"--config.data.data_dir={overrides['data.data_dir']}", *FLAGS, *extra]
    if processes > 1:
        cmd += [f"--coordinator_address=127.0.0.1:{_free_port()}",
                f"--num_processes={processes}"]
    workdir.parent.mkdir(parents=True, exist_ok=True)
    procs = []
    for p in range(processes):
        log_path = workdir.parent / f"{workdir.name}.{int(time.time() * 1e3)}.p{p}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd + ([f"--process_id={p}"] if processes > 1 else []),
                                    cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = log_path
        procs.append(proc)
    return procs


def _output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")


def _run(env, workdir: Path, processes: int, *extra: str) -> list[str]:
    procs = _launch(env, workdir, processes, *extra)
    for p in procs:
        p.wait(timeout=600)
    outs = [_output(p) for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outs


def _losses(workdir: Path) -> dict[int, float]:
    """Loss per step from metrics.jsonl (the last record of a step that was run twice)."""
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def _final(workdir: Path):
    with Checkpointer(workdir, async_save=False) as ckpt:
        return ckpt.restore()


def _assert_same_training(workdir: Path, reference: Path) -> None:
    """Losses of all steps and the final params/state match the 1 x 8 reference (rtol 1e-5)."""
    got, want = _losses(workdir), _losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-5)
    a, b = _final(workdir), _final(reference)
    assert a.step == b.step == STEPS and a.data_state == b.data_state
    assert a.data_state["global_batches"] == STEPS
    leaves = jax.tree_util.tree_flatten_with_path(b.state["params"])[0]
    for (path, x), y in zip(leaves, jax.tree.leaves(a.state["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    start = _final_params_at(reference, 1)
    assert any(not np.allclose(s, x) for s, (_, x) in zip(start, leaves, strict=True))


def _final_params_at(workdir: Path, step: int) -> list[np.ndarray]:
    with Checkpointer(workdir, async_save=False) as ckpt:
        return [np.asarray(x) for x in jax.tree.leaves(ckpt.restore(step).state["params"])]


def _keep_steps_up_to(src: Path, dst: Path, step: int) -> Path:
    """A copy of workdir ``src`` whose checkpoints stop at ``step`` (as if stopped there)."""
    shutil.copytree(src, dst)
    for d in (dst / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > step:
            shutil.rmtree(d)
    return dst


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> Path:
    """The 1 process x 8 devices run every multi-process run is compared with."""
    workdir = tmp_path_factory.mktemp("one_process") / "run"
    _run(env, workdir, 1)
    return workdir


def test_two_processes_lay_out_rows_and_read_the_same_global_batches(env, tmp_path):
    """Process p's rows land at [p*L, (p+1)*L) of the global array, p-th along the mesh, and
    the 2-process loader's global batches equal the 1-process loader's."""
    overrides, environ = env
    environ = {**environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for p in range(2):
        with open(tmp_path / f"worker{p}.log", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "multihost_worker.py"), address, str(p),
                 overrides["data.idx_dir"], overrides["data.data_dir"]],
                cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT))
    for p, proc in enumerate(procs):
        proc.wait(timeout=300)
        out = (tmp_path / f"worker{p}.log").read_text()
        assert proc.returncode == 0, out[-4000:]
        result = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
        assert result["process_count"] == 2 and result["device_count"] == 8
        assert result["mesh_processes"] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert result["rows"] == list(range(16))
        assert result["same_global_batches"] == [True, True, True]


@pytest.fixture(scope="module")
def killed(env, tmp_path_factory) -> dict:
    """A 2-process run whose process 1 is killed (-9) once process 0 has logged step 2."""
    workdir = tmp_path_factory.mktemp("killed") / "run"
    procs = _launch(env, workdir, 2, "--heartbeat_timeout_seconds=10")
    deadline = time.monotonic() + 600
    while f"step 2/{STEPS}" not in _output(procs[0]):
        assert time.monotonic() < deadline and procs[0].poll() is None, _output(procs[0])[-3000:]
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        procs[0].wait(timeout=120)
        seconds = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    step = _final(workdir).step
    return {"workdir": workdir, "seconds": seconds, "step": step,
            "returncode": procs[0].returncode, "victim": procs[1].returncode,
            "output": _output(procs[0])}


def test_a_killed_process_stops_its_peer_within_the_heartbeat_timeout(killed):
    assert killed["victim"] == -signal.SIGKILL
    assert killed["returncode"] != 0, killed["output"][-3000:]
    assert killed["seconds"] < 60
    assert "Task 1 heartbeat timeout" in killed["output"], killed["output"][-3000:]
    assert 1 <= killed["step"] < STEPS


def test_restarting_both_processes_resumes_and_matches_one_process(env, killed, reference,
                                                                   tmp_path):
    """2 processes (killed, then restarted from their checkpoint) = 1 process straight."""
    workdir = _keep_steps_up_to(killed["workdir"], tmp_path / "restart", killed["step"])
    outs = _run(env, workdir, 2)
    assert f"resumed from step {killed['step']}" in outs[0]
    _assert_same_training(workdir, reference)


def test_two_process_checkpoint_continues_on_one_process(env, killed, reference, tmp_path):
    workdir = _keep_steps_up_to(killed["workdir"], tmp_path / "to_one", killed["step"])
    outs = _run(env, workdir, 1)
    assert f"resumed from step {killed['step']}" in outs[0]
    _assert_same_training(workdir, reference)


def test_one_process_checkpoint_continues_on_two_processes(env, reference, tmp_path):
    workdir = _keep_steps_up_to(reference, tmp_path / "to_two", STEPS // 2)
    outs = _run(env, workdir, 2)
    assert f"resumed from step {STEPS // 2}" in outs[0]
    _assert_same_training(workdir, reference)
