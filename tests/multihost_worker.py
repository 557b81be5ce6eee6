"""One of two processes checking the data layout of a real multi-process run (test_multihost).

    python tests/multihost_worker.py HOST:PORT PROCESS_ID IDX_DIR TFDS_DIR

Prints one ``RESULT {json}`` line: the mesh's process order along the batch axis, the global
array ``to_global_batch`` builds from each process's rows (gathered to every process), and
whether the first global batches of the 2-process loader equal those of a 1-process loader.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from jssl.train.mesh import initialize_distributed

ROOT = Path(__file__).resolve().parent.parent


def main(address: str, process_id: int, idx_dir: str, data_dir: str) -> None:
    initialize_distributed(address, 2, process_id)
    import jax
    from jax.experimental import multihost_utils

    from jssl.data.inputs import train_loader
    from jssl.data.pipeline import to_global_batch
    from jssl.train.mesh import make_mesh
    from jssl.train.state import batch_spec

    spec = importlib.util.spec_from_file_location("simclr", ROOT / "experiments" / "simclr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.data.idx_dir, config.data.data_dir = idx_dir, data_dir
    mesh = make_mesh(config)
    batch = config.train.batch_size
    local = batch // jax.process_count()
    # Process p contributes the global positions p*local ... (p+1)*local - 1.
    rows = to_global_batch({"i": np.arange(process_id * local, (process_id + 1) * local)}, mesh,
                           batch_spec(mesh))["i"]
    gathered = multihost_utils.process_allgather(rows, tiled=True)
    two = iter(train_loader(config))
    one = iter(train_loader(config, process_index=0, process_count=1))
    same = []
    for _ in range(3):
        images = to_global_batch(next(two), mesh, batch_spec(mesh))["image"]
        full = multihost_utils.process_allgather(images, tiled=True)
        same.append(bool(np.array_equal(full, next(one)["image"])))
    print("RESULT " + json.dumps({
        "process_count": jax.process_count(), "device_count": jax.device_count(),
        "mesh_processes": [int(d.process_index) for d in mesh.devices.reshape(-1)],
        "rows": np.asarray(gathered).tolist(), "same_global_batches": same}), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
