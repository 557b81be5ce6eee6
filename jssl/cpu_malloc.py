"""tcmalloc for jssl's CPU runs: the command line restarts itself with it preloaded.

XLA:CPU allocates each program's temporaries (one buffer for the whole program, plus
scratch for the larger kernels) with ``malloc`` at every execution and frees them at the
end, and its runtime makes many small allocations per thunk on several threads. glibc serves
every request above 32 MiB, and every large request made on one of XLA's worker threads,
with a fresh ``mmap`` and returns it with ``munmap`` on ``free``, so the kernel zero-fills
each 4 KiB page again at the next step: the SimCLR ``fashion_mnist`` update takes ~71 000
page faults per step. gperftools' tcmalloc keeps freed memory for reuse and serves small
blocks from per-thread caches. ``bench/cpu_malloc.py`` measures the CPU presets' updates
with glibc, with glibc tuned by ``mallopt`` (one arena, no ``mmap``, no trimming) and with
tcmalloc, in fresh processes: on a 2-core AMD EPYC tcmalloc took 0.57-0.79 of glibc's time
(docs/performance.md). The ``mallopt`` tuning gained less (0.59-0.99) and held up to twice
glibc's resident memory, so jssl does not use it.

A library cannot swap the allocator of a running process, so :func:`maybe_reexec` (called
first thing by ``python -m jssl.main`` and the ``jssl`` command) restarts the same command
line once with ``LD_PRELOAD`` naming tcmalloc, when

* ``JSSL_CPU_MALLOC`` is not ``0`` (the opt-out),
* the system is Linux and tcmalloc is installed (Debian/Ubuntu: ``apt-get install
  libtcmalloc-minimal4``; see :data:`LIBRARIES` and :data:`SEARCH_DIRS`),
* ``LD_PRELOAD`` does not already name an allocator (a user's choice wins),
* this process is not already the restarted one (``JSSL_CPU_MALLOC_PRELOADED`` is set), and
* JAX will run on the CPU: ``JAX_PLATFORMS`` starts with ``cpu``, or no accelerator plugin
  (``jax_plugins``, ``jax_cuda12_plugin``, ``jax_cuda13_plugin``, ``libtpu``) is installed.

``exec`` keeps the process id, the open files and the signal dispositions, so a scheduler's
SIGTERM (preemption) still reaches the run. Only the allocator changes: every kernel
computes the same numbers. Code that imports jssl as a library can get the same by
starting Python with ``LD_PRELOAD=$(python -c 'from jssl.cpu_malloc import find_tcmalloc;
print(find_tcmalloc())')``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

OPT_OUT = "JSSL_CPU_MALLOC"
MARKER = "JSSL_CPU_MALLOC_PRELOADED"
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
               "/usr/lib", "/usr/local/lib")
ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
ACCELERATOR_MODULES = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")


def find_tcmalloc(dirs: Sequence[str] = SEARCH_DIRS) -> str | None:
    """Path of the first of :data:`LIBRARIES` found in ``dirs``, or None."""
    for name in LIBRARIES:
        for d in dirs:
            path = Path(d, name)
            if path.is_file():
                return str(path)
    return None


def accelerator_plugins() -> list[str]:
    """The installed JAX accelerator plugin modules of :data:`ACCELERATOR_MODULES`."""
    return [m for m in ACCELERATOR_MODULES if importlib.util.find_spec(m) is not None]


def runs_on_cpu(environ: Mapping[str, str]) -> bool:
    """Whether JAX will use the CPU backend: ``JAX_PLATFORMS`` starts with ``cpu``, or it is
    unset and no accelerator plugin is installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_plugins()


def preload_env(environ: Mapping[str, str], find: Callable[[], str | None] | None = None,
                platform: str | None = None) -> dict[str, str] | None:
    """The environment to restart with (tcmalloc first in ``LD_PRELOAD``, the marker set), or
    None when the conditions of the module docstring say to leave the process alone.
    ``find`` (default :func:`find_tcmalloc`) and ``platform`` (default ``sys.platform``)
    are for tests."""
    find = find_tcmalloc if find is None else find
    platform = sys.platform if platform is None else platform
    if environ.get(OPT_OUT, "1") == "0" or environ.get(MARKER):
        return None
    if not platform.startswith("linux"):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ALLOCATORS) or not runs_on_cpu(environ):
        return None
    lib = find()
    if lib is None:
        return None
    return {**environ, "LD_PRELOAD": f"{lib}:{preload}" if preload else lib, MARKER: "1"}


def maybe_reexec(environ: Mapping[str, str] | None = None,
                 argv: Sequence[str] | None = None,
                 execve: Callable[[str, Sequence[str], Mapping[str, str]], object] = os.execve,
                 ) -> bool:
    """Restart this command line (``sys.orig_argv``) with tcmalloc preloaded if
    :func:`preload_env` allows it. Returns False when it does not restart (``execve`` does
    not return)."""
    env = preload_env(os.environ if environ is None else environ)
    if env is None:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, list(sys.orig_argv if argv is None else argv), env)
    return True
