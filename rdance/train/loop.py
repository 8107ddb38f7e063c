"""The training loop shared by every entrypoint: mesh, data, state, compile, steps, checkpoints.

It reads top to bottom like the job it runs: build the mesh, the data iterator and the abstract
state; restore the latest checkpoint or create fresh parameters on their shards; compile the step
ahead of time; then step, log and checkpoint until done or preempted.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from rdance.core import config_checks, sharding
from rdance.data.pipeline import RandomAccess, host_batches
from rdance.train.checkpoint import Checkpointer, NonFiniteLoss, PreemptionWatch, last_good
from rdance.train.metrics import MetricWriter, Progress
from rdance.train.optim import make_optimizer
from rdance.train.state import StateFactory, TrainState
from rdance.train.step import LossFn, compile_train_step, make_train_step, memory_per_device


@dataclasses.dataclass
class Task:
    """What a training job trains: a model, its loss and its examples.

    ``evaluate(params, step)`` returns scalars logged under ``eval/`` every ``train.eval_every``
    steps and at the end. ``initial_params(shardings)`` returns starting parameters (e.g. a
    pretrained checkpoint) placed on the given shardings; without it parameters are random.
    """
    make_model: Callable[[], nnx.Module]
    loss_fn: LossFn
    source: RandomAccess
    transform: Callable[[Any], Any] | None = None
    evaluate: Callable[[Any, int], dict[str, float]] | None = None
    initial_params: Callable[[Any], Any] | None = None


def raise_on_non_finite(steps, fetched, ckpt_path: str, remedy: str) -> None:
    """Stop at the first step whose metrics say ``finite`` is false, naming the step, its loss
    and gradient norm, and the last good checkpoint to resume from."""
    for step, metrics in zip(steps, fetched):
        if not metrics["finite"]:
            raise NonFiniteLoss(
                f"step {step}: loss {float(metrics['loss'])}, gradient norm "
                f"{float(metrics['grad_norm'])}; {last_good(ckpt_path, remedy)}")


@dataclasses.dataclass
class Result:
    state: TrainState
    step: int
    preempted: bool
    compiled_memory: dict


def batch_spec(local_batch, mesh) -> Any:
    """Global ShapeDtypeStructs (with shardings) of a batch, given one host's slice of it."""
    ways = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
    rows = jax.tree.leaves(local_batch)[0].shape[0] * jax.process_count()
    if rows % ways:
        raise sharding.ShardingError(
            f"a global batch of {rows} does not split over the {ways} data-parallel devices "
            f"(data x fsdp of mesh {dict(mesh.shape)}); make data.global_batch_size a multiple of {ways}")
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(), *x.shape[1:]), x.dtype,
                                       sharding=sharding.batch_sharding(mesh, x.ndim)), local_batch)


def train(config: ml_collections.ConfigDict, workdir: str, task: Task) -> Result:
    config_checks.check_bounds(config)
    tc = config.train
    mesh = sharding.make_mesh(config.mesh.shape)
    logging.info("mesh %s over %d devices, %d process(es)", dict(mesh.shape), mesh.size,
                 jax.process_count())
    tx, schedule = make_optimizer(config.optim, tc.steps)
    factory = StateFactory(task.make_model, tx, mesh, config.mesh.rules, config.seed)

    data = host_batches(task.source, global_batch_size=config.data.global_batch_size,
                        num_steps=tc.steps, seed=config.data.seed, transform=task.transform)
    data_iter = iter(data)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints,
                        async_save=tc.async_checkpoints)
    writer = MetricWriter(workdir)

    restored = ckpt.restore_latest(factory.abstract_with_shardings(), data_iter, config.to_dict())
    if restored is None:
        state = factory.init(task.initial_params(factory.shardings.params) if task.initial_params else None)
        start = 0
    else:
        start, state = restored
        logging.info("resuming from %s", ckpt.path_of(start))
    writer.truncate_after(start if restored else None)

    # A fresh iterator over the same dataset gives the batch shapes without moving data_iter.
    compiled = compile_train_step(make_train_step(factory, task.loss_fn, schedule), factory,
                                  batch_spec(next(iter(data)), mesh))
    memory = memory_per_device(compiled)

    progress = Progress(tc.steps, config.data.global_batch_size, start)
    preemption = PreemptionWatch()
    pending: list[tuple[int, dict]] = []
    last_saved = start if start else None
    step = start
    try:
        while step < tc.steps:
            if preemption.should_stop(step):
                _flush(pending, writer, progress, ckpt, last_saved)
                ckpt.save(step, state, data_iter, config.to_dict())
                ckpt.wait()
                logging.info("preempted: saved %s; rerun the same command to resume",
                             ckpt.path_of(step))
                return Result(state, step, True, memory)
            batch = sharding.global_batch(next(data_iter), mesh)
            state, metrics = compiled(state, batch)
            step += 1
            pending.append((step, metrics))
            is_last = step == tc.steps
            if step % tc.log_every == 0 or is_last:
                _flush(pending, writer, progress, ckpt, last_saved)
            if task.evaluate and ((tc.eval_every and step % tc.eval_every == 0) or is_last):
                _flush(pending, writer, progress, ckpt, last_saved)
                scalars = {f"eval/{k}": float(v) for k, v in task.evaluate(state.params, step).items()}
                writer.write(step, scalars)
                logging.info("eval at step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
            if step % tc.checkpoint_every == 0 or is_last:
                _flush(pending, writer, progress, ckpt, last_saved)
                ckpt.save(step, state, data_iter, config.to_dict())
                last_saved = step
        return Result(state, step, False, memory)
    finally:
        preemption.close()
        ckpt.close()
        writer.close()


def _flush(pending: list, writer: MetricWriter, progress: Progress, ckpt: Checkpointer,
           last_saved: int | None) -> None:
    """Fetch the metrics of the steps since the last flush, stop on a non-finite step, log."""
    if not pending:
        return
    steps = [s for s, _ in pending]
    fetched = jax.device_get([m for _, m in pending])
    pending.clear()
    raise_on_non_finite(steps, fetched, ckpt.path_of(last_saved),
                        "Lower optim.learning_rate or set optim.grad_clip_norm")
    step = steps[-1]
    scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
    scalars.update(progress.rates(step))
    writer.write(step, scalars)
    progress.log(step, scalars)
