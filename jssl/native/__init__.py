"""Native CPU kernels for XLA:CPU, built on first use and called through ``jax.ffi``.

The C++ sources beside this file are compiled with the system C++ compiler (``$CXX``, else
``g++``/``c++``, ``-O3 -march=native``; :func:`march`) against the XLA FFI headers that
jaxlib ships (``jax.ffi.include_dir()``), once per source, compiler, flags, jaxlib version and
CPU, into ``$JSSL_NATIVE_CACHE`` (default ``~/.cache/jssl/native``). The build writes a
temporary file and renames it into place, so concurrent processes never load a half-written
library. Without a compiler, or when the build fails, :func:`load` returns None after one
warning and the callers use XLA's own kernels: the native code is a faster path, never a
requirement.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax

SOURCES = Path(__file__).resolve().parent
#: the compiler flags but ``-march`` (the cache key includes them and the CPU)
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")


def march() -> str:
    """``-march=$JSSL_NATIVE_MARCH``, default ``native`` (this CPU's vector width: AVX-512,
    AVX2, ...); e.g. ``x86-64-v3`` for a library that also runs on older x86 CPUs."""
    return f"-march={os.environ.get('JSSL_NATIVE_MARCH', 'native')}"


def compiler() -> str | None:
    """``$CXX``, else ``g++`` or ``c++`` from PATH; None if there is none."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("JSSL_NATIVE_CACHE", Path.home() / ".cache" / "jssl" / "native"))


def _cpu() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(keep))


def _build(name: str, cxx: str) -> Path:
    source = SOURCES / f"{name}.cc"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[0]
    flags = (*FLAGS, march())
    key = hashlib.sha256("\0".join([source.read_text(), version, " ".join(flags),
                                    jax.__version__, _cpu()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"lib{name}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", str(source), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The built library ``jssl/native/<name>.cc`` (built now if needed), or None with one
    warning when there is no compiler or the build fails."""
    cxx = compiler()
    if cxx is None:
        warnings.warn(f"jssl: no C++ compiler (set $CXX or install g++), so the native CPU "
                      f"kernel {name!r} is off and XLA's own is used", stacklevel=2)
        return None
    try:
        return ctypes.CDLL(str(_build(name, cxx)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"jssl: building the native CPU kernel {name!r} failed, so XLA's own is "
                      f"used ({type(e).__name__}: {str(e)[:500]})", stacklevel=2)
        return None
