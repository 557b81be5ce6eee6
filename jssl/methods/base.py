"""What a self-supervised method tells the trainer.

A method is one small file that says, in the order of its paper: the networks
it trains, how it makes views or masks, its loss, and its extra state (EMA
teacher, queue, center) with the update rule. The trainer owns everything else:
mesh, optimizer, checkpoints, logging, evaluation.

A step has two parts. ``prepare(batch, key)`` makes the model inputs that need
no gradient (views, masks, pretext inputs); ``loss`` differentiates the
networks on them. The trainer compiles them as two jitted programs on the
mesh, so prepared inputs stay on the device, and a test can feed the same
inputs to a 1-device and an N-device update: augmentations computed on
different meshes agree only to the last float bit (reductions are partitioned
differently), and an untrained network's gradient can be very sensitive to
such one-ulp differences.

Arrays the trainer hands a method are *global* (GSPMD-sharded over the batch
axes of the mesh); a loss that compares examples across the batch runs through
``self.shard(loss_fn, ...)``, i.e. ``jax.shard_map`` over the batch axes with
negatives gathered across devices. BatchNorm statistics are therefore global
batch statistics (synchronised BN) without any ``axis_name`` in the model.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jssl import losses
from jssl.train.mesh import batch_axes

Variables = dict[str, Any]
Metrics = dict[str, jax.Array]


class Method(abc.ABC):
    """Base class. Subclasses implement ``init``, ``loss`` and ``features``."""

    name = "method"
    #: Whether the loss compares examples across the batch: such losses refuse
    #: gradient accumulation, which would silently shrink the negatives.
    uses_batch_negatives = False

    def __init__(self, config: Any, mesh: Mesh):
        self.config = config
        self.mesh = mesh

    # ---------------------------------------------------------------- helpers
    @property
    def axis_name(self) -> tuple[str, ...]:
        """The mesh axes the batch is split over (what the losses gather across)."""
        return batch_axes(self.mesh)

    def shard(self, loss_fn: Callable, batch_argnums: Sequence[int], **kwargs) -> Callable:
        """``loss_fn`` under ``shard_map`` over the batch axes (see ``losses.shard_loss``)."""
        return losses.shard_loss(loss_fn, self.mesh, batch_argnums=batch_argnums,
                                 axis_name=self.axis_name, **kwargs)

    @staticmethod
    def images(batch: dict[str, jax.Array]) -> jax.Array:
        """The batch's images as float32 in [0, 1] (uint8 bytes are shipped to device)."""
        x = batch["image"]
        if x.dtype == jnp.uint8:
            return x.astype(jnp.float32) / 255.0
        return x.astype(jnp.float32)

    # ------------------------------------------------------------ the contract
    @abc.abstractmethod
    def init(self, key: jax.Array, batch: dict[str, jax.Array]) -> tuple[Variables, Any]:
        """(variables, extra): ``variables["params"]`` is trained; other collections
        (``batch_stats``) are model state; ``extra`` is the method's own state
        (teacher params, queue, center) — an empty dict if none."""

    def prepare(self, batch: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        """Model inputs made from the global batch without gradient: views, masks ...

        Every output leaf has the batch (or a multiple of it) as its leading axis.
        ``key`` is the step's key, the same one ``loss`` receives. Default: the batch.
        """
        return batch

    @abc.abstractmethod
    def loss(self, params: Any, variables: Variables, extra: Any, batch: dict[str, jax.Array],
             key: jax.Array, step: jax.Array) -> tuple[jax.Array, tuple[Metrics, Variables]]:
        """(loss, (metrics, new non-param variables)) on the prepared inputs ``batch``."""

    def update_extra(self, params: Any, extra: Any, step: jax.Array) -> Any:
        """The extra state after an optimizer step (EMA, queue ...). Default: unchanged."""
        return extra

    @abc.abstractmethod
    def features(self, variables: Variables, extra: Any, images: jax.Array) -> jax.Array:
        """Frozen features [B, D] of float images in [0, 1], for evaluation."""

    def load_frozen(self, state: Any) -> Any:
        """The train state with networks taken from other runs put into ``state.extra`` (a
        distillation teacher), before any checkpoint of this run is restored. Default:
        unchanged."""
        return state

    def freeze_patterns(self) -> dict[str, int]:
        """{param-path regex: steps} whose updates are zeroed for the first steps."""
        return {}
