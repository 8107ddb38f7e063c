"""The RM loss with soft tie targets and row weights: the numbers computed by hand from the
model's own logits, and a row of weight 0 counts as absent."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.reward import losses
from rdance.reward.task import forward_rows, make_loss_fn
from tests.reward.test_task import tiny_task


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tiny_task(tmp_path_factory.mktemp("rm"))


def batch_of(task, records):
    rows = [task.builder(r) for r in records]
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def hand_loss(task, net, batch, rationale_weight, row_weights):
    """answer_ce by hand: the decision token's target P(yes)=target, P(no)=1-target; the other
    answer tokens at rationale_weight; each row's token weights times its record's weight."""
    spec = task.loss_spec
    col = spec.answer_col
    logits = np.asarray(net.logits(forward_rows(net, batch, spec)[:, col:]), np.float64)
    logp = log_softmax(logits)
    targets = np.asarray(batch["targets"]).reshape(logits.shape[0], -1)[:, col:]
    kind = np.asarray(batch["target_kind"]).reshape(logits.shape[0], -1)[:, col:]
    target = np.asarray(batch["target"]).reshape(-1)
    weight = np.asarray(batch["weight"]).reshape(-1) if row_weights else np.ones_like(target)
    total = norm = 0.0
    for r in range(logits.shape[0]):
        for t in range(kind.shape[1]):
            if kind[r, t] == 1:
                nll = -(target[r] * logp[r, t, spec.yes_id] + (1 - target[r]) * logp[r, t, spec.no_id])
                w = 1.0
            elif kind[r, t] == 2:
                nll, w = -logp[r, t, targets[r, t]], rationale_weight
            else:
                continue
            total += weight[r] * w * nll
            norm += weight[r] * w
    return total / norm


def test_soft_tie_rows_and_weights_give_the_loss_computed_by_hand(task):
    records = [task.source[i] for i in range(3)]
    records[1] = dataclasses.replace(records[1], tie=True, label=0, weight=0.25)
    records[2] = dataclasses.replace(records[2], weight=3.0)
    batch = batch_of(task, records)
    np.testing.assert_array_equal(batch["target"][1], [0.5, 0.5])
    np.testing.assert_array_equal(batch["target"][0], [records[0].label == 1, records[0].label == 0])
    net = task.make_model()
    spec = task.loss_spec
    assert spec.rationale_weight == 0.25
    for row_weights in (False, True):
        loss, _ = make_loss_fn(dataclasses.replace(spec, row_weights=row_weights))(net, batch, None)
        np.testing.assert_allclose(float(loss), hand_loss(task, net, batch, spec.rationale_weight, row_weights),
                                   rtol=2e-5)
    # A tie's loss is not a hard pair's: the soft target moves it.
    hard = batch_of(task, [records[0], dataclasses.replace(records[1], tie=False), records[2]])
    assert abs(float(make_loss_fn(spec)(net, hard, None)[0]) - float(make_loss_fn(spec)(net, batch, None)[0])) > 1e-4


def test_a_row_of_weight_zero_is_a_row_absent(task):
    records = [task.source[i] for i in range(4)]
    weighted = [dataclasses.replace(r, weight=w) for r, w in zip(records, (1.0, 0.0, 2.0, 0.5))]
    spec = dataclasses.replace(task.loss_spec, row_weights=True)
    net = task.make_model()
    with_zero, metrics = make_loss_fn(spec)(net, batch_of(task, weighted), None)
    without = make_loss_fn(spec)(net, batch_of(task, [weighted[0], weighted[2], weighted[3]]), None)[0]
    np.testing.assert_allclose(float(with_zero), float(without), rtol=1e-6)
    # Weights all 1 are the unweighted loss; off (the default), the weights are not read.
    ones = batch_of(task, records)
    np.testing.assert_allclose(float(make_loss_fn(spec)(net, ones, None)[0]),
                               float(make_loss_fn(task.loss_spec)(net, ones, None)[0]), rtol=1e-6)
    np.testing.assert_array_equal(make_loss_fn(task.loss_spec)(net, batch_of(task, weighted), None)[0],
                                  make_loss_fn(task.loss_spec)(net, ones, None)[0])


def test_bradley_terry_with_a_tie_and_weights_by_hand():
    w_scores, l_scores = jnp.array([1.0, -0.5, 2.0]), jnp.array([0.0, 0.5, -1.0])
    p_first, weight = jnp.array([1.0, 0.5, 1.0]), jnp.array([2.0, 1.0, 0.0])
    logsig = lambda x: -np.log1p(np.exp(-x))
    d = np.array([1.0, -1.0, 3.0])
    per = -(np.array([1, .5, 1]) * logsig(d) + (1 - np.array([1, .5, 1])) * logsig(-d))
    expected = (per * [2, 1, 0]).sum() / 3
    np.testing.assert_allclose(float(losses.bradley_terry(w_scores, l_scores, p_first, weight)), expected, rtol=1e-6)
    # A tie is minimised by equal scores, a hard pair is not.
    grad = jax.grad(lambda s: losses.bradley_terry(s, jnp.zeros(1), jnp.array([0.5])))(jnp.zeros(1))
    assert float(grad[0]) == 0.0
    # Hard targets without weights are the plain mean, exactly.
    np.testing.assert_array_equal(losses.bradley_terry(w_scores, l_scores, jnp.ones(3)),
                                  losses.bradley_terry(w_scores, l_scores))
    loss, parts = losses.pointwise_generative(w_scores, l_scores, 0.1, jnp.ones(3))
    np.testing.assert_allclose(loss, losses.pointwise_generative(w_scores, l_scores, 0.1)[0], rtol=1e-7)


def test_row_weights_config_is_a_bool():
    import ml_collections
    from rdance.reward.recipe import row_weights
    assert row_weights(ml_collections.ConfigDict({"row_weights": True})) is True
    assert row_weights(ml_collections.ConfigDict({})) is False     # configs without the key
    with pytest.raises(ValueError, match=r"rm.row_weights='yes'; use true .* or false"):
        row_weights(ml_collections.ConfigDict({"row_weights": "yes"}))
