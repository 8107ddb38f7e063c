"""Resume never loses what a run wrote: unreadable checkpoints, torn metrics, non-finite updates,
a changed model. Each case starts from a copy of one finished 20-step toy run (checkpoints 10, 20)."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
from flax import nnx

from experiments import toy
from rdance.models.mlp import MLP, TeacherRegression, mse_loss
from rdance.train import loop
from rdance.train.checkpoint import CheckpointError, NonFiniteLoss
from rdance.train.metrics import MetricWriter


def config(**train):
    c = toy.get_config()
    c.train.update({**dict(steps=20, log_every=5, checkpoint_every=10), **train})
    return c


def task(c):
    m = c.model
    return loop.Task(make_model=lambda: MLP(m.in_features, m.hidden, m.depth, m.out_features, rngs=nnx.Rngs(0)),
                     loss_fn=mse_loss, source=TeacherRegression(512, m.in_features, m.out_features, seed=1))


def records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, devices):
    workdir = str(tmp_path_factory.mktemp("finished"))
    c = config()
    loop.train(c, workdir, task(c))
    return workdir


@pytest.fixture
def workdir(finished, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(finished, copy)
    return copy


def truncate_largest_array_file(checkpoint):
    files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(checkpoint, "state")) for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(100)


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_unreadable_latest_checkpoint_resumes_from_the_one_before(workdir, finished, caplog):
    ckpts = os.path.join(workdir, "checkpoints")
    truncate_largest_array_file(os.path.join(ckpts, "20"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 25, "lo')   # a crash mid-write tears the last line
    c = config()
    with caplog.at_level(logging.WARNING):
        result = loop.train(c, workdir, task(c))
    assert result.step == 20
    said = warnings(caplog)
    assert any(f"checkpoint {ckpts}/20 cannot be read (OUT_OF_RANGE" in w and "moved it to "
               f"{workdir}/checkpoints_unreadable/20." in w and f"resuming from {ckpts}/10" in w for w in said), said
    assert any(f"{workdir}/metrics.jsonl line 5 is torn" in w for w in said), said
    # Nothing lost: the unreadable checkpoint is kept aside, and the rerun reproduces the metrics.
    assert [p.startswith("20.") for p in os.listdir(os.path.join(workdir, "checkpoints_unreadable"))] == [True]
    assert sorted(os.listdir(ckpts)) == ["10", "20"]
    got, want = records(workdir), records(finished)
    assert [r["step"] for r in got] == [5, 10, 15, 20]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-6)


def test_no_readable_checkpoint_is_one_line_naming_the_folder(workdir):
    ckpts = os.path.join(workdir, "checkpoints")
    for step in ("10", "20"):
        truncate_largest_array_file(os.path.join(ckpts, step))
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    c = config()
    with pytest.raises(CheckpointError) as e:
        loop.train(c, workdir, task(c))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {ckpts} can be read (2 tried; {ckpts}/20: OUT_OF_RANGE")
    assert message.endswith(f"move {ckpts} aside to start afresh, or pass another --workdir")
    assert sorted(os.listdir(ckpts)) == ["10", "20"]
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def test_changed_model_names_the_changed_keys_and_the_fix(workdir):
    c = config(steps=30)
    c.model.hidden = 32
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    with pytest.raises(CheckpointError) as e:
        loop.train(c, workdir, task(c))
    message = str(e.value)
    assert "strict" not in message and "\n" not in message
    assert message.startswith(f"cannot resume from {workdir}/checkpoints/20: ")
    assert "(e.g. params.hidden.0.bias: saved (64,), now (32,))" in message
    assert "config keys changed since it was saved: model.hidden 64 -> 32; train.steps 20 -> 30." in message
    assert message.endswith("Rerun with the saved values (--config.model.hidden=64 --config.train.steps=20) "
                            "or pass a fresh --workdir")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_non_finite_parameters_are_never_saved(workdir):
    """Resumed with a learning rate that overflows float32, step 21's loss and gradient are finite
    but its update is not: the checkpoint named as good must be 20, and 21 must not be written."""
    c = config(steps=24, checkpoint_every=1)
    c.optim.update(dict(learning_rate=1e39, schedule="constant", warmup_steps=0))
    ckpts = os.path.join(workdir, "checkpoints")
    with pytest.raises(NonFiniteLoss) as e:
        loop.train(c, workdir, task(c))
    message = str(e.value)
    assert message.startswith("step 21: the update left non-finite values in ")
    assert "params." in message and "(its loss and gradient were finite), so they were not saved" in message
    assert message.endswith(f"last good checkpoint: {ckpts}/20. Lower optim.learning_rate or set "
                            "optim.grad_clip_norm, then resume from it")
    assert sorted(os.listdir(ckpts)) == ["10", "20"]
    assert [r["step"] for r in records(workdir)] == [5, 10, 15, 20, 21]


def test_torn_metrics_lines_are_dropped_with_file_and_line(tmp_path, caplog):
    writer = MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(step, {"loss": float(step)})
    writer.close()
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "loss": 0.')
    with caplog.at_level(logging.WARNING):
        MetricWriter(str(tmp_path)).truncate_after(2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert any(f"{path} line 4 is torn" in w for w in warnings(caplog)), warnings(caplog)
