"""Reward-model objectives: generative (next-token CE on yes/no, with or without a rationale),
pointwise generative (Bradley-Terry on P(yes) plus a small CE), and the regressive baseline."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def yes_log_odds(answer_logits: jax.Array, yes_id: int, no_id: int) -> jax.Array:
    """log P(yes) - log P(no) at the answer position: the reward's logit over {yes, no}."""
    return answer_logits[..., yes_id] - answer_logits[..., no_id]


def p_yes(answer_logits: jax.Array, yes_id: int, no_id: int, normalise: bool = True) -> jax.Array:
    """The generative reward: P("yes"), over {yes, no} by default, else over the vocabulary."""
    logits = answer_logits.astype(jnp.float32)
    if normalise:
        return jax.nn.sigmoid(yes_log_odds(logits, yes_id, no_id))
    return jax.nn.softmax(logits, axis=-1)[..., yes_id]


def answer_ce(logits: jax.Array, targets: jax.Array, kind: jax.Array, rationale_weight: float):
    """Next-token CE over answer tokens: the decision with weight 1, other answer tokens with
    ``rationale_weight`` (0 trains the decision alone). Normalised by the total weight."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = jnp.where(kind == 1, 1.0, jnp.where(kind == 2, rationale_weight, 0.0))
    loss = -(token_logp * weights).sum() / jnp.maximum(weights.sum(), 1e-6)
    decision = kind == 1
    decision_nll = -(token_logp * decision).sum() / jnp.maximum(decision.sum(), 1)
    return loss, {"decision_nll": decision_nll}


def bradley_terry(winner_scores: jax.Array, loser_scores: jax.Array) -> jax.Array:
    """-log sigmoid(s_w - s_l), averaged: the preference likelihood of a scalar score."""
    return -jnp.mean(jax.nn.log_sigmoid(winner_scores - loser_scores))


def pointwise_generative(winner_odds: jax.Array, loser_odds: jax.Array, ce_weight: float):
    """BT on the yes-log-odds of winner vs loser plus ``ce_weight`` x CE (winner yes, loser no)."""
    bt = bradley_terry(winner_odds, loser_odds)
    ce = -jnp.mean(jax.nn.log_sigmoid(winner_odds) + jax.nn.log_sigmoid(-loser_odds)) / 2
    return bt + ce_weight * ce, {"bt": bt, "yes_no_ce": ce}
