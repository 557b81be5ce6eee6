"""Training engine: mesh, optimizers, checkpoints, metrics, the loop."""
