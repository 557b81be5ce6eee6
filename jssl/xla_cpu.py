"""The XLA:CPU flag jssl sets before JAX starts its CPU backend.

XLA:CPU (jaxlib 0.10-0.11) hands each convolution to a YNNPACK fusion and fuses the
elementwise producer (BatchNorm apply + ReLU) into it. On the 2-core AMD EPYC of
``docs/performance.md`` that made the convolutional train steps slower than Eigen's
convolution kernels: the SimCLR / BYOL / CLIP CPU updates took 1.16-1.25x as long
(``bench/xla_cpu_flag.py``) as with
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``, which keeps YNNPACK for
dots, reductions and elementwise fusions and gives convolutions back to Eigen. The result
is the same convolution (float32, rounding-level differences only; tested against a
process without the flag in ``tests/test_xla_cpu.py``).

:func:`configure` appends that flag to ``XLA_FLAGS`` when

* the environment does not already choose a YNNPACK fusion type (a user's choice wins),
* ``JSSL_XLA_CPU_FLAGS`` is not ``0`` (the opt-out), and
* the installed jaxlib is one whose XLA knows the flag (0.10.x, 0.11.x; XLA aborts on
  unknown flags, so other versions are left alone).

``import jssl`` calls it. XLA reads ``XLA_FLAGS`` once, when the first backend starts, so
it only takes effect if jssl is imported before any JAX computation. It only affects the
CPU backend.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from importlib import metadata

YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
OPT_OUT = "JSSL_XLA_CPU_FLAGS"
_KNOWN_JAXLIB = ((0, 10), (0, 11))


def jaxlib_version() -> tuple[int, ...]:
    """(major, minor, ...) of the installed jaxlib, read without importing it; () if absent."""
    try:
        text = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ()
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def configure(environ: MutableMapping[str, str] | None = None,
              version: tuple[int, ...] | None = None) -> str | None:
    """Append :data:`YNN_CONV_FLAG` to ``environ["XLA_FLAGS"]`` under the conditions of the
    module docstring; return the flag added, or None when nothing was changed."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1") == "0":
        return None
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return None
    version = jaxlib_version() if version is None else version
    if tuple(version[:2]) not in _KNOWN_JAXLIB:
        return None
    environ["XLA_FLAGS"] = f"{flags} {YNN_CONV_FLAG}".strip()
    return YNN_CONV_FLAG
