"""jssl: self-supervised learning in JAX/Flax.

`from jssl import losses` imports only the loss library (no trainer, no data
stack); the heavier subpackages are imported explicitly by those who need them.
Importing jssl appends one XLA:CPU flag to ``XLA_FLAGS`` (convolutions on Eigen's
kernels; see :mod:`jssl.xla_cpu`, opt out with ``JSSL_XLA_CPU_FLAGS=0``).
"""
from jssl import xla_cpu as _xla_cpu

_xla_cpu.configure()

__version__ = "0.1.0"
