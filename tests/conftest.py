"""Test setup: 8 simulated CPU devices for every test run.

XLA reads XLA_FLAGS once, when the backend starts, so this must run before
anything imports jax. pytest imports conftest.py before the test modules.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jssl  # noqa: E402,F401  (appends jssl's XLA:CPU flag before the backend starts)

# One persistent compilation cache for the whole run: the pytest process makes it, and the
# xdist workers and the `python -m jssl.main` subprocesses the tests start inherit it, so a
# train step compiled by one of them (the same tiny config recurs in many tests) is read
# back by the others instead of recompiled. Compiling dominates these tests on CPU.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="jssl-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# A size limit turns on JAX's file lock (the `filelock` package), so processes writing and
# reading one entry at once never see a half-written file.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 simulated CPU devices, got {jax.device_count()}"
