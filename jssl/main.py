"""Train and evaluate a jssl experiment config.

    python -m jssl.main --config=experiments/simclr.py:fashion_mnist --workdir=runs/simclr
    python -m jssl.main --config=experiments/simclr.py:tiny --config.train.steps=5 --workdir=...

The same command runs on one CPU, one GPU or every host of a TPU pod / SLURM job
(there ``jax.distributed.initialize`` needs no flags); by hand, give each process
--coordinator_address, --num_processes and --process_id. On CPU the command restarts itself
once with tcmalloc preloaded when it is installed (``jssl.cpu_malloc``; opt out with
``JSSL_CPU_MALLOC=0``).
"""
if __name__ == "__main__":  # restart with tcmalloc before the ~1.5 s of imports below
    from jssl.cpu_malloc import maybe_reexec

    maybe_reexec()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jssl.train.mesh import initialize_distributed  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]")
flags.DEFINE_string("workdir", None, "checkpoints, metrics and results go here")
flags.DEFINE_enum("mode", "train_eval", ["train", "eval", "train_eval"], "what to run")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
flags.DEFINE_integer("process_id", None, "index of this process (multi-host)")
flags.DEFINE_integer("heartbeat_timeout_seconds", 30,
                     "multi-host: a process silent this long counts as dead and stops the others")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
    from jssl.train.run import run  # after distributed init: nothing may touch devices first

    run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    app.run(main)
