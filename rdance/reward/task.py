"""Reward-model training as a Task for the shared loop: rows, loss, and held-out evaluation."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.reward import losses
from rdance.reward.model import RewardNet, to_pixels
from rdance.reward.rows import RowBuilder, RowSpec


@dataclasses.dataclass(frozen=True)
class LossSpec:
    paradigm: str
    rationale_weight: float
    pointwise_ce_weight: float
    yes_id: int
    no_id: int
    answer_col: int        # max_prompt_tokens - 1: where every row's answer is read
    image_size: int
    max_tiles: int
    row_weights: bool = False   # rm.row_weights: each row's loss times its record's weight


def forward_rows(net: RewardNet, batch: dict, spec: LossSpec):
    """Flatten [records, rows, ...] to rows and run the network; hidden states of every row."""
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    mask = batch["attention_mask"].reshape(ids.shape)
    if spec.paradigm == "pairwise":
        return net.hidden(ids, None, mask, features=pair_features(net, batch["images"], spec))
    images = batch["images"].reshape(-1, *batch["images"].shape[-3:])
    pixels = to_pixels(images, spec.image_size, spec.max_tiles)
    return net.hidden(ids, pixels, mask)


def pair_features(net: RewardNet, frames: jax.Array, spec: LossSpec) -> jax.Array:
    """Image features for pairwise rows, each image encoded once.

    A record's frames are [A, B, B, A] (RowBuilder: the pair in both orders, A and B of equal
    frame counts): the vision tower sees [A, B] and the second order's features are the first
    order's with the two halves swapped. The same numbers as encoding all four, for half the
    vision compute (the tower was ~a quarter of the smoke RM's step)."""
    records, count = frames.shape[:2]
    first_order = frames[:, :count // 2].reshape(-1, *frames.shape[-3:])
    feats = net.vlm.image_features(to_pixels(first_order, spec.image_size, spec.max_tiles))
    feats = feats.reshape(records, 2, -1, *feats.shape[-2:])       # [records, (A, B), tiles, tokens, hidden]
    both_orders = jnp.concatenate([feats, feats[:, ::-1]], axis=1)  # A, B, B, A
    return both_orders.reshape(-1, *feats.shape[-2:])


def row_scores(net: RewardNet, hidden, spec: LossSpec) -> jax.Array:
    """Per-row score: yes-log-odds (generative) or the head's scalar (regressive)."""
    at_answer = hidden[:, spec.answer_col]
    if spec.paradigm == "regressive":
        return net.score(at_answer)
    return losses.yes_log_odds(net.logits(at_answer).astype(jnp.float32), spec.yes_id, spec.no_id)


def make_loss_fn(spec: LossSpec):
    def loss_fn(net: RewardNet, batch: dict, rng):
        del rng
        hidden = forward_rows(net, batch, spec)
        yes = batch["yes"].reshape(-1)
        if spec.paradigm in ("pairwise", "caption"):
            col = spec.answer_col
            logits = net.logits(hidden[:, col:])  # answer columns only: the prompt needs no vocab
            targets = batch["targets"].reshape(hidden.shape[0], -1)[:, col:]
            kind = batch["target_kind"].reshape(hidden.shape[0], -1)[:, col:]
            if spec.paradigm == "caption":  # every caption token counts alike
                loss, metrics = losses.answer_ce(logits, targets, kind, 1.0)
                predicted = jnp.argmax(logits, -1) == targets
                # The first answer token alone is a grounding question's yes/no: on a set of
                # questions it is the VLM's accuracy at telling a prompt's clip from a near miss.
                first = kind[:, 0] > 0
                metrics = {"token_accuracy": (predicted * (kind > 0)).sum() / jnp.maximum((kind > 0).sum(), 1),
                           "first_token_accuracy": (predicted[:, 0] * first).sum() / jnp.maximum(first.sum(), 1)}
                return loss, metrics
            target = batch["target"].reshape(-1)
            weight = batch["weight"].reshape(-1) if spec.row_weights else None
            loss, metrics = losses.answer_ce(logits, targets, kind, spec.rationale_weight,
                                             soft=(target, spec.yes_id, spec.no_id), row_weight=weight)
            odds = losses.yes_log_odds(logits[:, 0].astype(jnp.float32), spec.yes_id, spec.no_id)
            metrics["accuracy"] = _decided_mean((odds > 0) == (yes == 1), target)
            return loss, metrics
        scores = row_scores(net, hidden, spec).reshape(-1, 2)  # rows: winner, loser
        p_first = batch["target"].reshape(-1, 2)[:, 0]          # 1, or 0.5 for a tie
        weight = batch["weight"].reshape(-1, 2)[:, 0] if spec.row_weights else None
        if spec.paradigm == "pointwise":
            loss, metrics = losses.pointwise_generative(scores[:, 0], scores[:, 1], spec.pointwise_ce_weight,
                                                        p_first, weight)
        else:
            loss, metrics = losses.bradley_terry(scores[:, 0], scores[:, 1], p_first, weight), {}
        metrics["accuracy"] = _decided_mean(scores[:, 0] > scores[:, 1], p_first)
        return loss, metrics
    return loss_fn


def _decided_mean(correct: jax.Array, target: jax.Array) -> jax.Array:
    """Accuracy over rows with a preference (a tie has no right answer)."""
    decided = target != 0.5
    return (correct * decided).sum() / jnp.maximum(decided.sum(), 1)


def pair_metrics(paradigm: str, scores: np.ndarray, yes: np.ndarray) -> dict[str, float]:
    """Accuracy (pairwise: both orders averaged), and for P(yes) rewards calibration."""
    scores = scores.reshape(-1, 2)
    if paradigm != "pairwise":
        return {"accuracy": float(np.mean(scores[:, 0] > scores[:, 1]))}
    p = 1 / (1 + np.exp(-scores.reshape(-1)))
    truth = yes.reshape(-1)
    out = {"accuracy": float(np.mean((p > 0.5) == (truth == 1))),
           "brier": float(np.mean((p - truth) ** 2)), "ece": expected_calibration_error(p, truth),
           # Position bias: P(yes) should not depend on which image is shown second.
           "mean_p_yes": float(p.mean())}
    return out


def expected_calibration_error(p: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            error += sel.mean() * abs(p[sel].mean() - truth[sel].mean())
    return float(error)


class Evaluator:
    """Scores held-out pair sets with a jitted forward; returns metrics per set."""

    def __init__(self, graphdef, builder: RowBuilder, spec: LossSpec, sets: dict[str, Sequence],
                 mesh, batch_records: int):
        self.builder, self.spec, self.mesh, self.batch = builder, spec, mesh, batch_records
        # Rows are built once: evaluation then costs only the forward passes.
        self.sets = {name: _stack([builder(source[i], training=False) for i in range(len(source))])
                     for name, source in sets.items()}

        def scores(params, batch):
            net = nnx.merge(graphdef, params)
            if spec.paradigm == "caption":  # held-out captions: teacher-forced NLL and accuracy
                loss, metrics = make_loss_fn(spec)(net, batch, None)
                return jnp.stack([loss, metrics["token_accuracy"], metrics["first_token_accuracy"]])
            return row_scores(net, forward_rows(net, batch, spec), spec)
        self._scores = jax.jit(scores)

    def __call__(self, params, step: int) -> dict[str, float]:
        del step
        out = {}
        replicated = NamedSharding(self.mesh, P())
        for name, rows in self.sets.items():
            n = len(rows["yes"])
            if self.spec.paradigm == "caption":
                parts = [np.asarray(self._scores(params, jax.device_put(
                    {k: v[np.arange(s, s + self.batch) % n] for k, v in rows.items()}, replicated)))
                    for s in range(0, n, self.batch)]
                (out[f"{name}/caption_nll"], out[f"{name}/token_accuracy"],
                 out[f"{name}/first_token_accuracy"]) = map(float, np.mean(parts, axis=0))
                continue
            chunks = []
            for start in range(0, n, self.batch):
                idx = np.arange(start, start + self.batch) % n  # the last batch wraps: one shape
                batch = jax.device_put({k: v[idx] for k, v in rows.items()}, replicated)
                chunks.append(np.asarray(self._scores(params, batch)).reshape(self.batch, -1))
            scores = np.concatenate(chunks)[:n]
            decided = (rows["target"] != 0.5).all(axis=1)   # ties have no right answer
            if not decided.any():
                continue
            for key, value in pair_metrics(self.spec.paradigm, scores[decided], rows["yes"][decided]).items():
                out[f"{name}/{key}"] = value
        return out


def _stack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def row_spec_from_config(rm, image_size: int, tokens_per_tile: int) -> RowSpec:
    return RowSpec(paradigm=rm.paradigm, answer_format=rm.answer_format, criteria=rm.criteria,
                   max_prompt_tokens=rm.max_prompt_tokens, max_answer_tokens=rm.max_answer_tokens,
                   image_size=image_size, max_tiles=rm.max_tiles, tokens_per_tile=tokens_per_tile,
                   video_frames=rm.get("video_frames", 0), video_sampling=rm.get("video_sampling", "uniform"))
