"""jssl's XLA:CPU flag: when it is added, that it reaches the compiler, and that the
convolutions it re-routes compute the same ResNet outputs and gradients."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jssl import xla_cpu
from jssl.models.resnet import resnet

ROOT = Path(__file__).resolve().parent.parent


def test_configure_appends_the_flag_once():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.configure(env, version=(0, 10, 2)) == xla_cpu.YNN_CONV_FLAG
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                        xla_cpu.YNN_CONV_FLAG]
    assert xla_cpu.configure(env, version=(0, 10, 2)) is None  # already there: unchanged
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
    empty: dict[str, str] = {}
    assert xla_cpu.configure(empty, version=(0, 11, 2)) == xla_cpu.YNN_CONV_FLAG
    assert empty["XLA_FLAGS"] == xla_cpu.YNN_CONV_FLAG


def test_configure_leaves_user_choice_opt_out_and_unknown_jaxlib_alone():
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    assert xla_cpu.configure(mine, version=(0, 10, 2)) is None
    assert mine == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    off = {xla_cpu.OPT_OUT: "0"}
    assert xla_cpu.configure(off, version=(0, 10, 2)) is None and "XLA_FLAGS" not in off
    for version in [(0, 9, 0), (0, 12, 0), (1, 0, 0), ()]:
        env: dict[str, str] = {}
        assert xla_cpu.configure(env, version=version) is None and env == {}


def test_jaxlib_version_matches_the_imported_jaxlib():
    import jaxlib

    assert xla_cpu.jaxlib_version() == tuple(int(p) for p in jaxlib.__version__.split(".")[:3])


def ynn_convolutions(hlo: str) -> int:
    """How many YNNPACK fusions of an optimised HLO module contain a convolution."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        head = line.split("=")[0]
        if line.rstrip().endswith("{") and "(" in head and not line.startswith(" "):
            name = line.split()[0].lstrip("%")
            if name == "ENTRY":
                name = line.split()[1].lstrip("%")
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    count = 0
    for line in hlo.splitlines():
        if "__ynn_fusion" in line and "calls=" in line:
            callee = line.split("calls=")[1].split(",")[0].strip().lstrip("%")
            count += any("convolution(" in body for body in bodies.get(callee, []))
    return count


_PROBE = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jssl.models.resnet import resnet

x = jnp.asarray(np.random.default_rng(0).random((16, 28, 28, 1), np.float32))
model = resnet("tiny", stem="cifar", conv_impl="xla")
variables = model.init(jax.random.key(0), x, train=False)

def loss(params, x):
    feats, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(feats)), feats

fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
hlo = fn.lower(variables["params"], x).compile().as_text()
(value, feats), grads = fn(variables["params"], x)
np.savez(sys.argv[1], feats=np.asarray(feats),
         **{"/".join(str(k.key) for k in path): np.asarray(g)
            for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]})
from tests.test_xla_cpu import ynn_convolutions
print(json.dumps({"ynn_convolutions": ynn_convolutions(hlo),
                  "convolutions": hlo.count("convolution("),
                  "flags": __import__("os").environ.get("XLA_FLAGS", "")}))
"""


def _probe(tmp_path: Path, name: str, opt_out: bool) -> tuple[dict, dict]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env[xla_cpu.OPT_OUT] = "0" if opt_out else "1"
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compiled HLO text must come from this process
    out = tmp_path / f"{name}.npz"
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        return info, dict(data)


def test_flag_reaches_xla_and_keeps_the_resnet_result(tmp_path):
    if xla_cpu.jaxlib_version()[:2] not in xla_cpu._KNOWN_JAXLIB:
        raise AssertionError(f"jaxlib {xla_cpu.jaxlib_version()} is not one jssl configures; "
                             "update _KNOWN_JAXLIB after checking the flag exists there")
    on, out_on = _probe(tmp_path, "on", opt_out=False)
    off, out_off = _probe(tmp_path, "off", opt_out=True)
    assert xla_cpu.YNN_CONV_FLAG in on["flags"] and "ynn_fusion" not in off["flags"]
    # With the flag no convolution sits in a YNNPACK fusion (they run on Eigen); without
    # it XLA wraps them in YNNPACK fusions.
    assert on["convolutions"] > 0 and on["ynn_convolutions"] == 0
    assert off["ynn_convolutions"] > 0
    assert sorted(out_on) == sorted(out_off) and len(out_on) > 10
    for key in out_on:
        a, b = out_on[key], out_off[key]
        scale = np.max(np.abs(b)) + 1e-12
        assert np.max(np.abs(a - b)) <= 1e-4 * scale, (key, np.max(np.abs(a - b)), scale)


def test_this_test_process_runs_with_the_flag():
    """conftest imports jssl before the backend starts, so the suite runs as users do."""
    flags = os.environ.get("XLA_FLAGS", "")
    assert xla_cpu.YNN_CONV_FLAG in flags or os.environ.get(xla_cpu.OPT_OUT) == "0"
    x = jnp.ones((2, 8, 8, 1))
    model = resnet("tiny", stem="cifar", conv_impl="xla")
    v = model.init(jax.random.key(0), x, train=False)
    hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile().as_text()
    assert "convolution(" in hlo
    if xla_cpu.YNN_CONV_FLAG in flags:
        assert ynn_convolutions(hlo) == 0
