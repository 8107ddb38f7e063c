"""The compiled train step: sharded equals one device, FSDP divides memory, NaN stops."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import toy
from rdance.core import sharding as sh
from rdance.data.pipeline import host_batches
from rdance.models.mlp import MLP, TeacherRegression, mse_loss
from rdance.train import loop
from rdance.train.checkpoint import Checkpointer
from rdance.train.optim import make_optimizer
from rdance.train.state import StateFactory
from rdance.train.step import compile_train_step, make_train_step, memory_per_device


def run_steps(mesh, config, num_steps=4):
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    m = config.model
    factory = StateFactory(lambda: MLP(m.in_features, m.hidden, m.depth, m.out_features, rngs=nnx.Rngs(0)),
                           tx, mesh, sh.DEFAULT_RULES, seed=0)
    data = host_batches(TeacherRegression(256, m.in_features, m.out_features, seed=1),
                        global_batch_size=config.data.global_batch_size, num_steps=num_steps, seed=0)
    it = iter(data)
    compiled = compile_train_step(make_train_step(factory, mse_loss, schedule), factory,
                                  loop.batch_spec(next(iter(data)), mesh))
    state, losses = factory.init(), []
    for _ in range(num_steps):
        state, metrics = compiled(state, sh.global_batch(next(it), mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), memory_per_device(compiled)


@pytest.fixture(scope="module")
def config():
    c = toy.get_config()
    c.model.update(dict(in_features=16, hidden=64, depth=2, out_features=8))
    c.data.global_batch_size = 16
    return c


@pytest.fixture(scope="module")
def one_device(config, devices):
    return run_steps(sh.make_mesh((1, 1, 1), devices[:1]), config)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_one_device(config, one_device, devices, shape):
    losses, params, _ = run_steps(sh.make_mesh(shape, devices), config)
    ref_losses, ref_params, _ = one_device
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params, ref_params)


def test_fsdp_divides_argument_memory(devices):
    c = toy.get_config()
    c.model.update(dict(in_features=64, hidden=512, depth=4, out_features=8))
    c.data.global_batch_size = 16
    *_, replicated = run_steps(sh.make_mesh((8, 1, 1)), c, num_steps=1)
    *_, fsdp = run_steps(sh.make_mesh((1, 8, 1)), c, num_steps=1)
    ratio = fsdp["argument"] / replicated["argument"]
    assert fsdp["argument"] <= replicated["argument"] / 8 * 1.15, ratio


class PoisonedRegression(TeacherRegression):
    """One example carries a NaN, as a corrupt record would."""

    def __init__(self, poisoned_index, *args):
        super().__init__(*args)
        self.poisoned_index = poisoned_index

    def __getitem__(self, index):
        example = super().__getitem__(index)
        if index == self.poisoned_index:
            example["x"][0] = np.nan
        return example


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, devices):
    c = toy.get_config()
    c.train.update(dict(steps=40, log_every=1, checkpoint_every=2))
    # Find an example that the pipeline delivers in step 7, and poison it.
    index_source = [{"i": np.int64(i)} for i in range(512)]
    batches = iter(host_batches(index_source, global_batch_size=32, num_steps=40, seed=0))
    step7 = [next(batches) for _ in range(7)][-1]["i"][0]
    task = loop.Task(make_model=lambda: MLP(16, 64, 3, 4, rngs=nnx.Rngs(0)), loss_fn=mse_loss,
                     source=PoisonedRegression(int(step7), 512, 16, 4, 1))
    with pytest.raises(loop.NonFiniteLoss, match=r"step 7: loss nan.*last good checkpoint: \S+/6\b"):
        loop.train(c, str(tmp_path), task)
    # Nothing non-finite reached the metrics, and the named checkpoint holds finite parameters.
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert records and all(np.isfinite(r["loss"]) for r in records)
    last = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    factory = StateFactory(task.make_model, make_optimizer(c.optim, 40)[0], sh.make_mesh((1, -1, 1)),
                           sh.DEFAULT_RULES, seed=0)
    data_iter = iter(host_batches(task.source, global_batch_size=32, num_steps=40, seed=0))
    state = ckpt.restore(last, factory.abstract_with_shardings(), data_iter)
    ckpt.close()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_batch_that_does_not_split_over_devices_is_explained(devices):
    mesh = sh.make_mesh((2, 4, 1))
    with pytest.raises(sh.ShardingError, match="global batch of 4 does not split over the 8 data-parallel"):
        loop.batch_spec({"x": np.zeros((4, 3), np.float32)}, mesh)
