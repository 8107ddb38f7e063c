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


def answer_ce(logits: jax.Array, targets: jax.Array, kind: jax.Array, rationale_weight: float,
              soft: tuple[jax.Array, int, int] | None = None, row_weight: jax.Array | None = None):
    """Next-token CE over answer tokens [rows, T]: the decision with weight 1, other answer
    tokens with ``rationale_weight`` (0 trains the decision alone). Normalised by the total weight.

    ``soft = (p_yes [rows], yes_id, no_id)``: the decision token's target is P(yes)=p_yes,
    P(no)=1-p_yes (0.5 for a tie; 1 or 0 give the hard target's exact numbers).
    ``row_weight [rows]`` multiplies each row's token weights, so the loss is the weighted mean
    over rows (with the decision alone: sum_r w_r CE_r / sum_r w_r); a row of weight 0 counts
    as absent."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if soft is not None:
        p_yes, yes_id, no_id = soft
        p = p_yes.astype(jnp.float32)[:, None]
        mixed = p * logp[..., yes_id] + (1 - p) * logp[..., no_id]
        token_logp = jnp.where(kind == 1, mixed, token_logp)
    weights = jnp.where(kind == 1, 1.0, jnp.where(kind == 2, rationale_weight, 0.0))
    decision = (kind == 1).astype(jnp.float32)
    if row_weight is not None:
        weights = weights * row_weight.astype(jnp.float32)[:, None]
        decision = decision * row_weight.astype(jnp.float32)[:, None]
    loss = -(token_logp * weights).sum() / jnp.maximum(weights.sum(), 1e-6)
    decision_nll = -(token_logp * decision).sum() / jnp.maximum(decision.sum(), 1e-6 if row_weight is not None else 1)
    return loss, {"decision_nll": decision_nll}


def _mean(values: jax.Array, weight: jax.Array | None) -> jax.Array:
    if weight is None:
        return jnp.mean(values)
    weight = weight.astype(jnp.float32)
    return (values * weight).sum() / jnp.maximum(weight.sum(), 1e-6)


def bradley_terry(winner_scores: jax.Array, loser_scores: jax.Array, p_first: jax.Array | None = None,
                  weight: jax.Array | None = None) -> jax.Array:
    """-log sigmoid(s_w - s_l), averaged: the preference likelihood of a scalar score. With
    ``p_first`` the target probability that the first wins (0.5: a tie), ``weight`` per pair."""
    diff = winner_scores - loser_scores
    nll = -jax.nn.log_sigmoid(diff)
    if p_first is not None:
        nll = -(p_first * jax.nn.log_sigmoid(diff) + (1 - p_first) * jax.nn.log_sigmoid(-diff))
    return _mean(nll, weight)


def pointwise_generative(winner_odds: jax.Array, loser_odds: jax.Array, ce_weight: float,
                         p_first: jax.Array | None = None, weight: jax.Array | None = None):
    """BT on the yes-log-odds of winner vs loser plus ``ce_weight`` x CE (winner yes, loser no;
    a tie, ``p_first`` 0.5: both 0.5/0.5), averaged with ``weight`` per pair."""
    bt = bradley_terry(winner_odds, loser_odds, p_first, weight)
    if p_first is None:
        per_pair = -(jax.nn.log_sigmoid(winner_odds) + jax.nn.log_sigmoid(-loser_odds)) / 2
    else:
        soft = lambda odds, p: p * jax.nn.log_sigmoid(odds) + (1 - p) * jax.nn.log_sigmoid(-odds)
        per_pair = -(soft(winner_odds, p_first) + soft(loser_odds, 1 - p_first)) / 2
    ce = _mean(per_pair, weight)
    return bt + ce_weight * ce, {"bt": bt, "yes_no_ce": ce}
