"""Repeated blocks stored stacked along a leading 'layers' axis and run with a scan.

Compile time stays flat in depth because the block body is traced once; rdance.models.convert maps the
per-layer checkpoint keys (``blocks.3.attn.to_q.weight``) onto index 3 of the stacked leaves.
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from rdance.core import sharding
from rdance.models import remat as rematlib


def make_stack(make_block: Callable[[nnx.Rngs], nnx.Module], num: int, rngs: nnx.Rngs) -> nnx.Module:
    """``num`` blocks with their parameters stacked on a leading axis named 'layers'."""
    @nnx.split_rngs(splits=num)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return make_block(rngs)
    return make(rngs)


def run_stack(blocks: nnx.Module, carry, *shared, remat: str = "none"):
    """Apply the stacked blocks in order: ``carry = block(carry, *shared)`` for each layer.

    ``shared`` inputs (time embedding, rotary tables, masks) are broadcast to every layer.
    With ``remat`` other than 'none' each layer's activations are recomputed in the backward
    pass according to the named policy (see rdance.models.remat).
    """
    # A plain lax.scan over the split state (not nnx.scan): the blocks may come from an
    # nnx.merge inside an outer jit or scan (the sampler), which nnx transforms refuse.
    graphdef, state = nnx.split(blocks)

    def apply(layer_state, carry):
        return nnx.merge(graphdef, layer_state)(carry, *shared)

    apply = rematlib.checkpoint(apply, remat)
    carry, _ = jax.lax.scan(lambda c, layer_state: (apply(layer_state, sharding.constrain_batch(c)), None),
                            carry, state)
    return carry
