"""The pure train step and its ahead-of-time compilation with explicit shardings."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.train.state import StateFactory, TrainState

# loss_fn(model, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


def make_train_step(factory: StateFactory, loss_fn: LossFn, schedule: optax.Schedule):
    """``train_step(state, batch) -> (state, metrics)``; the step's RNG is fold_in(rng, step)."""

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def objective(params):
            return loss_fn(factory.model(params), batch, rng)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = factory.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(aux, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                       finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def compile_train_step(train_step, factory: StateFactory, batch_spec) -> jax.stages.Compiled:
    """Lower and compile ahead of time; log the compiled memory per device."""
    replicated = NamedSharding(factory.mesh, P())
    batch_shardings = jax.tree.map(lambda s: s.sharding, batch_spec)
    jitted = jax.jit(train_step, in_shardings=(factory.shardings, batch_shardings),
                     out_shardings=(factory.shardings, replicated), donate_argnums=0)
    # Activations keep the batch split (FSDP) and, where the rules say, the token axis (sequence sharding).
    with sharding.activations_on(factory.mesh, factory.rules):
        lowered = jitted.lower(factory.abstract_with_shardings(), batch_spec)
    compiled = lowered.compile()
    log_memory(compiled, "train_step")
    return compiled


def memory_per_device(compiled: jax.stages.Compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {k.removesuffix("_size_in_bytes"): int(getattr(stats, k)) for k in keys}
    # Donated (aliased) outputs reuse argument buffers: count them once.
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def log_memory(compiled: jax.stages.Compiled, name: str) -> dict[str, int]:
    mem = memory_per_device(compiled)
    logging.info("%s compiled; per device: %s", name,
                 ", ".join(f"{k}={v / 2**20:.1f} MiB" for k, v in mem.items()))
    return mem
