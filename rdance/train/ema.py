"""Exponential moving average of the trained parameters (ReFL keeps an EMA generator)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The decay used after update ``step`` (0-based); with ``warmup`` it ramps as
    (1 + step) / (10 + step) up to ``decay``, so early averages do not cling to the start."""
    decay = jnp.float32(decay)
    if not warmup:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update(ema, params, decay: jax.Array):
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf in the leaves' dtype."""
    return jax.tree.map(lambda e, p: (e + (1.0 - decay) * (p.astype(e.dtype) - e)).astype(e.dtype), ema, params)
