"""The train state and how to create it, abstractly or directly on its shards."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rdance.core import sharding

@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: number of updates applied so far
    params: Any              # nested dict of arrays (nnx pure dict of the model's Params)
    opt_state: Any
    rng: jax.Array           # raw uint32 key data: checkpoints need no typed-key support


class StateFactory:
    """Everything the loop needs to build, restore and shard a TrainState for one model.

    The model is only ever built abstractly (``nnx.eval_shape``) on the host; real parameters
    come from a jitted init whose ``out_shardings`` place them, or from a checkpoint restored
    straight into those shardings.
    """

    def __init__(self, make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                 mesh: Mesh, rules, seed: int):
        self.make_model, self.tx, self.mesh, self.rules, self.seed = make_model, tx, mesh, rules, seed
        abstract_model = nnx.eval_shape(make_model)
        graphdef, abstract_params, *rest = nnx.split(abstract_model, nnx.Param, ...)
        leftovers = [leaf for part in rest for leaf in jax.tree.leaves(part)]
        if leftovers:
            raise ValueError(
                f"{type(abstract_model).__name__} holds non-parameter state ({len(leftovers)} arrays, "
                "e.g. stored Rngs or caches); train-time models must hold only nnx.Param")
        self.graphdef = graphdef
        param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh, rules))
        self.abstract = jax.eval_shape(self._init)
        replicated = NamedSharding(mesh, P())
        opt_shardings = optax.tree_utils.tree_map_params(
            tx, lambda _, s: s, self.abstract.opt_state, param_shardings,
            transform_non_params=lambda _: replicated)
        self.shardings = TrainState(step=replicated, params=param_shardings,
                                    opt_state=opt_shardings, rng=replicated)

    def _init(self) -> TrainState:
        return self._start_from(nnx.to_pure_dict(nnx.state(self.make_model(), nnx.Param)))

    def init(self, params=None) -> TrainState:
        """A fresh state, each array created on its own shards; ``params`` (already placed on
        ``shardings.params``) replace the random initial parameters."""
        if params is None:
            return jax.jit(self._init, out_shardings=self.shardings)()
        return jax.jit(self._start_from, out_shardings=self.shardings, donate_argnums=0)(params)

    def _start_from(self, params) -> TrainState:
        rng = jax.random.key_data(jax.random.key(self.seed))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=rng)

    def abstract_with_shardings(self) -> TrainState:
        """ShapeDtypeStructs carrying shardings: the restore target and the compile signature."""
        return sharding.with_shardings(self.abstract, self.shardings)

    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params)
