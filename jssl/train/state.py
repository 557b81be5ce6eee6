"""The train state pytree and the jitted train step.

Everything that must survive a restart lives in ``TrainState``: step, params,
non-param model variables (BatchNorm statistics), optimizer state, the method's
extra state (EMA teacher, queue, center) and the PRNG key. Per-step randomness
is ``fold_in(rng, step)``, so a resumed run draws the same numbers as an
uninterrupted one.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.methods.base import Method
from jssl.train.mesh import batch_axes, param_sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    variables: Any
    opt_state: Any
    extra: Any
    rng: jax.Array


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
    """Params-like fields follow ``param_sharding`` (FSDP-aware); step and RNG replicated."""
    rep = NamedSharding(mesh, P())
    return TrainState(step=rep, params=param_sharding(abstract.params, mesh),
                      variables=param_sharding(abstract.variables, mesh),
                      opt_state=param_sharding(abstract.opt_state, mesh),
                      extra=param_sharding(abstract.extra, mesh), rng=rep)


def batch_spec(mesh: Mesh) -> P:
    return P(batch_axes(mesh))


def create_state(method: Method, tx: optax.GradientTransformation, key: jax.Array,
                 sample_batch: dict[str, Any], mesh: Mesh) -> tuple[TrainState, TrainState]:
    """(state, shardings): the initial state, created directly in its shardings."""
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in sample_batch.items()}

    def init(key):
        init_key, rng = jax.random.split(key)
        batch = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
        variables, extra = method.init(init_key, batch)
        variables = dict(variables)
        params = variables.pop("params")
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, variables=variables,
                          opt_state=tx.init(params), extra=extra, rng=rng)

    shardings = state_shardings(jax.eval_shape(init, key), mesh)
    return jax.jit(init, out_shardings=shardings)(key), shardings


def make_train_step(method: Method, tx: optax.GradientTransformation, mesh: Mesh,
                    shardings: TrainState):
    """One optimizer step on a global batch: ``step(state, batch) -> (state, metrics)``.

    Two jitted programs with explicit shardings: ``method.prepare`` (views, masks)
    and the differentiated update, exposed as ``train_step.prepare(rng, step,
    batch)`` and ``train_step.update(state, inputs)`` (see ``jssl.methods.base``).
    """
    rep = NamedSharding(mesh, P())
    data = NamedSharding(mesh, batch_spec(mesh))

    def step_key(rng, step):
        return jax.random.fold_in(rng, step)

    def prepare(rng, step, batch):
        return method.prepare(batch, step_key(rng, step))

    def update(state: TrainState, inputs: dict[str, jax.Array]):
        key = step_key(state.rng, state.step)

        def loss_fn(params):
            return method.loss(params, state.variables, state.extra, inputs, key, state.step)

        (loss, (metrics, variables)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra = method.update_extra(params, state.extra, state.step)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        new = state.replace(step=state.step + 1, params=params, variables=variables,
                            opt_state=opt_state, extra=extra)
        return new, metrics

    prepare_fn = jax.jit(prepare, in_shardings=(rep, rep, data), out_shardings=data)
    update_fn = jax.jit(update, in_shardings=(shardings, data), out_shardings=(shardings, rep),
                        donate_argnums=0)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        return update_fn(state, prepare_fn(state.rng, state.step, batch))

    train_step.prepare = prepare_fn
    train_step.update = update_fn
    return train_step
