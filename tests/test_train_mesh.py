"""Mesh construction, shardings, batch checks and multi-process start-up."""
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jssl.train import mesh as mesh_lib


def _cfg(**axes):
    return ml_collections.ConfigDict({"mesh": axes})


def test_make_mesh_wildcard_and_order():
    m = mesh_lib.make_mesh(_cfg(fsdp=2, data=-1))
    assert m.axis_names == ("data", "fsdp")
    assert dict(m.shape) == {"data": 4, "fsdp": 2}
    assert sorted(d.id for d in m.devices.flat) == list(range(8))
    # The section alone and a big_vision-style pair list work too.
    assert dict(mesh_lib.make_mesh(_cfg(data=-1).mesh).shape) == {"data": 8}
    assert dict(mesh_lib.make_mesh({"mesh": {"fsdp": 8}}).shape) == {"fsdp": 8}
    m2 = mesh_lib.make_mesh([("fsdp", 4), ("data", 2)])
    assert m2.axis_names == ("fsdp", "data")


@pytest.mark.parametrize(
    "axes, match",
    [
        ({"data": 3, "fsdp": 2}, r"jax.device_count\(\)=8"),
        ({"data": -1, "fsdp": -1}, "at most one axis"),
        ({"data": -1, "fsdp": 3}, "does not divide jax.device_count"),
        ({"data": 0}, r"config.mesh.data=0"),
    ],
)
def test_make_mesh_bad_config(axes, match):
    with pytest.raises(ValueError, match=match) as err:
        mesh_lib.make_mesh(_cfg(**axes))
    assert "\n" not in str(err.value)


def test_make_mesh_error_names_axes():
    with pytest.raises(ValueError) as err:
        mesh_lib.make_mesh(_cfg(data=2, fsdp=2))
    assert "('data', 'fsdp')" in str(err.value) and "8" in str(err.value)


def test_batch_sharding_splits_over_data_and_fsdp():
    m = mesh_lib.make_mesh(_cfg(data=4, fsdp=2))
    sh = mesh_lib.batch_sharding(m)
    assert sh.spec == P(("data", "fsdp"))
    x = jax.device_put(np.arange(16 * 3, dtype=np.float32).reshape(16, 3), sh)
    # 8 distinct row blocks of 2, each device one of them.
    starts = sorted(s.index[0].start for s in x.addressable_shards)
    assert starts == list(range(0, 16, 2))
    np.testing.assert_array_equal(np.asarray(x), np.arange(48).reshape(16, 3))
    assert mesh_lib.batch_axes(mesh_lib.make_mesh(_cfg(data=-1))) == ("data",)


def test_check_global_batch():
    m = mesh_lib.make_mesh(_cfg(data=-1))
    mesh_lib.check_global_batch(64, m)
    with pytest.raises(ValueError) as err:
        mesh_lib.check_global_batch(100, m)
    assert str(err.value) == (
        "config.train.batch_size=100 is not divisible by the 8 devices on mesh axes "
        "('data',); use a multiple of 8"
    )


def test_param_sharding_fsdp_rule():
    m = mesh_lib.make_mesh(_cfg(data=2, fsdp=4))
    params = {
        "big": jax.ShapeDtypeStruct((1024, 2048), jnp.float32),  # 8 MiB: split dim 1
        "tall": jax.ShapeDtypeStruct((4096, 1022), jnp.float32),  # 1022 % 4: split dim 0
        "odd": jax.ShapeDtypeStruct((1023, 1025), jnp.float32),  # nothing divides: whole
        "small": jax.ShapeDtypeStruct((256, 256), jnp.float32),  # 256 KiB: replicated
        "bias": jax.ShapeDtypeStruct((2048,), jnp.float32),
    }
    sh = mesh_lib.param_sharding(params, m, min_size_mb=4)
    assert sh["big"].spec == P(None, "fsdp")
    assert sh["tall"].spec == P("fsdp", None)
    assert sh["odd"].spec == P()
    assert sh["small"].spec == P()
    assert sh["bias"].spec == P()
    # No fsdp axis (or size 1): everything replicated.
    plain = mesh_lib.param_sharding(params, mesh_lib.make_mesh(_cfg(data=-1, fsdp=1)))
    assert all(s.spec == P() for s in jax.tree.leaves(plain))
    # Placing a real array with that sharding gives each device a quarter of dim 1.
    x = jax.device_put(jnp.ones((1024, 2048)), sh["big"])
    assert {s.data.shape for s in x.addressable_shards} == {(1024, 512)}


def test_initialize_distributed_single_process_is_noop(monkeypatch):
    for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
                "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert mesh_lib.initialize_distributed() is False
    assert calls == []


def test_initialize_distributed_autodetect_and_passthrough(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert mesh_lib.initialize_distributed() is True
    assert calls[-1] == dict(coordinator_address=None, num_processes=None, process_id=None,
                             heartbeat_timeout_seconds=30)
    monkeypatch.delenv("SLURM_JOB_ID")
    assert mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 1) is True
    assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
                             heartbeat_timeout_seconds=30)
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
    with pytest.raises(ValueError, match="process_id=2"):
        mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="heartbeat_timeout_seconds=0 must be >= 1"):
        mesh_lib.initialize_distributed("10.0.0.1:1234", 2, 1, heartbeat_timeout_seconds=0)


_WORKER = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jssl.train import mesh as mesh_lib
    addr, pid = sys.argv[1], int(sys.argv[2])
    assert mesh_lib.initialize_distributed(addr, 2, pid)
    m = mesh_lib.make_mesh({"data": -1})
    mesh_lib.check_global_batch(4, m)
    local = np.full((2,), pid + 1.0, np.float32)
    x = jax.make_array_from_process_local_data(mesh_lib.batch_sharding(m), local, (4,))
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(m, P()))(x)
    print("RESULT", jax.process_count(), jax.device_count(), float(total), flush=True)
    jax.distributed.shutdown()
    """
)


def test_two_cpu_processes_really_communicate(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][0]
        # 2 processes x 2 devices; sum of [1, 1, 2, 2] computed across processes.
        assert line.split()[1:] == ["2", "4", "6.0"], line
