"""jssl.cpu_malloc: when the command line restarts itself with tcmalloc, that the restarted
process has it, and that it stops XLA:CPU from page-faulting its temporaries in afresh at
every call (glibc's defaults do)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from jssl import cpu_malloc

ROOT = Path(__file__).resolve().parent.parent
LIB = "/opt/lib/libtcmalloc_minimal.so.4"


def _env(**kw: str) -> dict[str, str]:
    return {"JAX_PLATFORMS": "cpu", **kw}


def test_preload_env_puts_tcmalloc_first_and_marks_the_restart():
    env = cpu_malloc.preload_env(_env(PATH="/bin"), find=lambda: LIB, platform="linux")
    assert env == {"JAX_PLATFORMS": "cpu", "PATH": "/bin", "LD_PRELOAD": LIB,
                   cpu_malloc.MARKER: "1"}
    other = cpu_malloc.preload_env(_env(LD_PRELOAD="/x/libfoo.so"), find=lambda: LIB,
                                   platform="linux")
    assert other["LD_PRELOAD"] == f"{LIB}:/x/libfoo.so"  # the user's preload is kept


def test_preload_env_leaves_the_process_alone(monkeypatch):
    def find():
        return LIB

    cases = [_env(**{cpu_malloc.OPT_OUT: "0"}),  # opt-out
             _env(**{cpu_malloc.MARKER: "1"}),  # already restarted: never loop
             _env(LD_PRELOAD="/usr/lib/libjemalloc.so.2"),  # the user chose an allocator
             _env(LD_PRELOAD=LIB),
             {"JAX_PLATFORMS": "cuda,cpu"}]  # not the CPU backend
    for environ in cases:
        assert cpu_malloc.preload_env(environ, find=find, platform="linux") is None, environ
    assert cpu_malloc.preload_env(_env(), find=find, platform="darwin") is None
    assert cpu_malloc.preload_env(_env(), find=lambda: None, platform="linux") is None
    monkeypatch.setattr(cpu_malloc, "accelerator_plugins", lambda: ["jax_cuda12_plugin"])
    assert cpu_malloc.preload_env({}, find=find, platform="linux") is None  # a GPU host
    assert cpu_malloc.preload_env(_env(), find=find, platform="linux") is not None
    monkeypatch.setattr(cpu_malloc, "accelerator_plugins", lambda: [])
    assert cpu_malloc.preload_env({}, find=find, platform="linux") is not None


def test_maybe_reexec_execs_the_same_command_line(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_malloc, "find_tcmalloc", lambda: LIB)
    monkeypatch.setattr(sys, "platform", "linux")
    argv = ["python", "-m", "jssl.main", "--workdir=w"]
    assert cpu_malloc.maybe_reexec(_env(), argv=argv,
                                   execve=lambda *a: calls.append(a)) is True
    assert calls == [(sys.executable, argv, {**_env(), "LD_PRELOAD": LIB,
                                             cpu_malloc.MARKER: "1"})]
    assert cpu_malloc.maybe_reexec(_env(**{cpu_malloc.OPT_OUT: "0"}), argv=argv,
                                   execve=lambda *a: calls.append(a)) is False
    assert len(calls) == 1


def test_find_tcmalloc_searches_the_dirs_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert cpu_malloc.find_tcmalloc([str(a), str(b)]) is None
    (b / "libtcmalloc.so.4").write_bytes(b"")
    assert cpu_malloc.find_tcmalloc([str(a), str(b)]) == str(b / "libtcmalloc.so.4")
    (b / "libtcmalloc_minimal.so.4").write_bytes(b"")  # the minimal build is preferred
    assert cpu_malloc.find_tcmalloc([str(a), str(b)]) == str(b / "libtcmalloc_minimal.so.4")


def _clean_env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "XLA_FLAGS", cpu_malloc.MARKER, cpu_malloc.OPT_OUT)}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", **kw)
    return env


def _tcmalloc() -> str:
    lib = cpu_malloc.find_tcmalloc()
    assert lib is not None, ("tcmalloc is not installed: apt-get install libtcmalloc-minimal4 "
                             "(`make test` installs it)")
    return lib


_RESTART = r"""
import os, sys
from jssl.cpu_malloc import MARKER, maybe_reexec
print("start", os.environ.get(MARKER, "-"), flush=True)
maybe_reexec()
maps = open("/proc/self/maps").read()
print("tcmalloc mapped" if "libtcmalloc" in maps else "tcmalloc absent", os.environ.get(MARKER))
"""


def test_restart_runs_the_command_again_with_tcmalloc_mapped():
    lib = _tcmalloc()
    proc = subprocess.run([sys.executable, "-c", _RESTART], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The command ran twice: first without the marker, then restarted with it and tcmalloc.
    assert proc.stdout.split("\n")[:3] == ["start -", "start 1", "tcmalloc mapped 1"], (
        proc.stdout, lib)
    off = subprocess.run([sys.executable, "-c", _RESTART], cwd=ROOT,
                         env=_clean_env(**{cpu_malloc.OPT_OUT: "0"}),
                         capture_output=True, text=True, timeout=120)
    assert off.stdout.split("\n")[:2] == ["start -", "tcmalloc absent None"], off.stdout


_PROBE = r"""
import json, resource, sys
import jssl, jax, jax.numpy as jnp, numpy as np

x = jnp.asarray(np.random.default_rng(0).random((2048, 4096), np.float32))  # 32 MiB

@jax.jit
def f(x):  # y and z are two 32 MiB temporaries of one program: one 64 MiB temp buffer
    y = jnp.sin(x)
    z = jnp.cumsum(y, axis=0)
    return jnp.sum(z * y[::-1], axis=0)

for _ in range(10):
    out = f(x).block_until_ready()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
np.save(sys.argv[1], np.asarray(out))
print(json.dumps({"faults_per_call": sorted(faults)[4]}))  # the median call
"""


def _probe(tmp_path: Path, name: str, preload: str | None) -> tuple[float, np.ndarray]:
    env = _clean_env(**({"LD_PRELOAD": preload} if preload else {}))
    out = tmp_path / f"{name}.npy"
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["faults_per_call"], np.load(out)


def test_tcmalloc_stops_the_per_call_page_faults_and_keeps_the_result(tmp_path):
    with_tcmalloc, out_tc = _probe(tmp_path, "tcmalloc", _tcmalloc())
    with_glibc, out_glibc = _probe(tmp_path, "glibc", None)
    pages = 64 * 2**20 / os.sysconf("SC_PAGE_SIZE")
    # glibc maps the 64 MiB temp buffer afresh at every call, so all its pages fault in
    # again; tcmalloc keeps the freed buffer and the median call faults (almost) none.
    assert with_glibc >= 0.9 * pages, (with_tcmalloc, with_glibc, pages)
    assert with_tcmalloc <= 0.02 * pages, (with_tcmalloc, with_glibc, pages)
    np.testing.assert_array_equal(out_tc, out_glibc)  # same kernels, same numbers
