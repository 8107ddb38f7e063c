"""Generation as two jitted pure functions over (graphdef, state): prefill and a decode loop.

The decode loop is one ``lax.scan`` (no Python per token). Finished rows emit ``pad`` and a
log-prob of 0, as transformers' greedy search pads them. Log-probs are those of the model's own
distribution (temperature 1, no top-p), the quantity RL objectives need.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class Generation(NamedTuple):
    tokens: jax.Array    # [batch, new_tokens]
    logprobs: jax.Array  # [batch, new_tokens], log p(token | prefix) under the model


def positions_from_mask(attention_mask):
    """Position ids that skip left padding (transformers' generate convention)."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.where(attention_mask.astype(bool), pos, 0)


def top_p_filter(logits, top_p):
    """transformers' TopPLogitsWarper: drop the least likely tokens whose total mass <= 1 - top_p."""
    sorted_logits = jnp.sort(logits, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = (cumulative <= 1 - top_p).at[..., -1].set(False)
    # The threshold is the smallest kept logit; ties with it are kept too.
    threshold = jnp.min(jnp.where(remove_sorted, jnp.inf, sorted_logits), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def select(logits, rng, temperature, top_p, greedy: bool):
    logits = logits.astype(jnp.float32)
    if greedy:
        token = jnp.argmax(logits, axis=-1)
    else:
        token = jax.random.categorical(rng, top_p_filter(logits / temperature, top_p), axis=-1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token.astype(jnp.int32), logp


@functools.partial(jax.jit, static_argnums=(0, 5))
def prefill(graphdef, state, input_ids, pixel_values, attention_mask, slots: int):
    model = nnx.merge(graphdef, state)
    return model.prefill(input_ids, pixel_values, attention_mask,
                         positions_from_mask(attention_mask), slots)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("steps", "greedy"))
def decode_loop(graphdef, state, logits, cache, attention_mask, rng, temperature, top_p,
                eos_ids, pad_id, *, steps: int, greedy: bool) -> Generation:
    """``steps`` tokens starting from the prefill's last logits; ``eos_ids`` [n] (-1 = none)."""
    b, length = attention_mask.shape
    valid = jnp.concatenate([attention_mask.astype(bool), jnp.ones((b, steps), bool)], axis=1)
    position = positions_from_mask(attention_mask)[:, -1] + 1

    def decode(token, position, cache, index):
        # nnx Variables may only be used at the trace level that created them: rebuild the
        # state's Variables (tree.map copies them) inside this branch before merging.
        fresh = jax.tree.map(lambda x: x, state)
        return nnx.merge(graphdef, fresh).decode(token, position, cache, index, valid)

    def step(carry, t):
        logits, cache, position, finished = carry
        token, logp = select(logits, jax.random.fold_in(rng, t), temperature, top_p, greedy)
        token = jnp.where(finished, pad_id, token)
        logp = jnp.where(finished, 0.0, logp)
        finished = finished | jnp.isin(token, eos_ids)
        # The last token needs no forward pass: its logits would never be used.
        logits, cache = jax.lax.cond(
            t < steps - 1,
            lambda: decode(token, position, cache, length + t),
            lambda: (logits, cache))
        return (logits, cache, position + 1, finished), (token, logp)

    carry = (logits, cache, position, jnp.zeros((b,), bool))
    _, (tokens, logps) = jax.lax.scan(step, carry, jnp.arange(steps))
    return Generation(tokens.T, logps.T)
