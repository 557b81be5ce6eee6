"""jssl: self-supervised learning in JAX/Flax.

`from jssl import losses` imports only the loss library (no trainer, no data
stack); the heavier subpackages are imported explicitly by those who need them.
"""
__version__ = "0.1.0"
