"""Activation rematerialisation by name: the one vocabulary of every model and of the config key
``remat`` (``generator.remat``, ``reward.remat``, ``rm.remat``)."""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from rdance.core.config_checks import ConfigValueError

POLICIES = {
    "none": None,                                                    # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,                # keep each layer's input only
    "dots": jax.checkpoint_policies.checkpoint_dots,                 # also keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # ... without batch dims
}
# jax.checkpoint_policies names configs used before, so their error says what to write instead.
_JAX_NAMES = {"nothing_saveable": "full", "checkpoint_dots": "dots",
              "checkpoint_dots_with_no_batch_dims": "dots_no_batch", "": "none"}


def policy(name: str):
    """The jax.checkpoint policy called ``name`` (None for 'none')."""
    if name not in POLICIES:
        hint = f" ({name!r} is {_JAX_NAMES[name]!r} here)" if name in _JAX_NAMES else ""
        raise ConfigValueError(f"unknown remat {name!r}{hint}; choose one of {', '.join(POLICIES)}")
    return POLICIES[name]


def checkpoint(fn: Callable, name: str) -> Callable:
    """``fn`` rematerialised in the backward pass under the policy ``name`` ('none': ``fn``)."""
    return fn if policy(name) is None else jax.checkpoint(fn, policy=POLICIES[name])


def call(module: nnx.Module, name: str, *args):
    """``module(*args)``, rematerialised under the policy ``name``. jax.checkpoint over the split
    state rather than nnx.remat, so this also works on a module merged inside an outer jit/grad
    (nnx transforms refuse modules from another trace level)."""
    if policy(name) is None:
        return module(*args)
    graphdef, state = nnx.split(module)

    def run(state, *args):
        # Variables are rebuilt inside the checkpoint trace: nnx refuses ones from another level.
        return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))(*args)
    return checkpoint(run, name)(state, *args)
