"""Test setup: 8 simulated CPU devices for every test run.

XLA reads XLA_FLAGS once, when the backend starts, so this must run before
anything imports jax. pytest imports conftest.py before the test modules.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 simulated CPU devices, got {jax.device_count()}"
