"""The one training loop every trainer runs, and ``train``, the setup of the single-model ones.

``run_loop`` steps a compiled step function over a batch iterator, keeping one step's metrics in
flight; logs, stops at a non-finite step, evaluates, checkpoints and stops on preemption, all
timed by ``due``. Its bookkeeping (metric writer, checkpointer, last step saved, steps/s clock,
WORKDIR/progress.json and the PREEMPTED marker of rdance.core.status) is a ``Progress``.
Reward training, generator pretraining and the toy run it through ``train`` (mesh, data,
state, restore, compile); fine-tuning (rdance.train.finetune_loop) through its own setup.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from rdance.core import config_checks, hardware, sharding, status
from rdance.data.pipeline import RandomAccess, host_batches
from rdance.train.checkpoint import Checkpointer, NonFiniteLoss, PreemptionWatch, last_good
from rdance.train.metrics import MetricWriter, format_seconds
from rdance.train.optim import make_optimizer
from rdance.train.state import StateFactory, TrainState
from rdance.train.step import LossFn, compile_train_step, make_train_step, memory_per_device


@dataclasses.dataclass
class Task:
    """What a training job trains: a model, its loss and its examples.

    ``evaluate(params, step)`` returns scalars logged under ``eval/`` every ``train.eval_every``
    steps and at the end (0: at the end only). ``initial_params(shardings)`` returns starting
    parameters (e.g. a pretrained checkpoint) placed on the given shardings; without it parameters
    are random.
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


def due(step: int, every: int, last_step: int, *, zero_is_never: bool = False) -> bool:
    """Whether something done every ``every`` steps (a log line, an eval, a checkpoint, a sample
    grid) runs after ``step``: at each multiple of ``every`` and after ``last_step``. ``every=0``
    means after the last step only, or, with ``zero_is_never``, not at all."""
    if every <= 0:
        return not zero_is_never and step == last_step
    return step % every == 0 or step == last_step


class Evaluator(Protocol):
    """Run between steps when ``due``; returns the scalars the loop writes and logs (images and
    other outputs it writes itself)."""

    def due(self, step: int, last_step: int) -> bool: ...

    def __call__(self, state: Any, step: int) -> dict[str, float]: ...


@dataclasses.dataclass
class Every:
    """The evaluator ``fn(state, step) -> scalars``, every ``every`` steps and after the last."""
    every: int
    fn: Callable[[Any, int], dict[str, float]]

    def due(self, step: int, last_step: int) -> bool:
        return due(step, self.every, last_step)

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        return self.fn(state, step)


@dataclasses.dataclass(frozen=True)
class Throughput:
    """What a compiled step costs per device (``hardware.step_cost``) and the peak it is measured
    against (None: unknown, e.g. a CPU without ``train.peak_tflops``), named ``peak_name``."""
    cost: hardware.StepCost
    peak_flops: float | None
    peak_name: str

    def utilisation(self, seconds_per_step: float) -> dict[str, float]:
        return hardware.utilisation(self.cost.flops, seconds_per_step, self.peak_flops)

    def describe(self, seconds_per_step: float) -> str:
        usage = self.utilisation(seconds_per_step)
        text = f"{usage['tflops_per_device']:.4g} TFLOP/s per device"
        if "mfu" in usage:
            return text + f", MFU {100 * usage['mfu']:.2f}% of {self.peak_flops / 1e12:g} TFLOP/s ({self.peak_name})"
        return text + f", no MFU: the peak of {self.peak_name} is unknown (set train.peak_tflops)"


def measure_step(compiled: jax.stages.Compiled, name: str, peak_tflops: float = 0.0) -> Throughput | None:
    """The throughput bookkeeping of a compiled step: its per-device FLOPs and bytes from XLA's
    cost analysis and the peak to compare with (``peak_tflops`` > 0, a config's
    ``train.peak_tflops``, else the local chip's from ``rdance.core.hardware``). Logs what it
    found; None when the backend has no cost analysis."""
    cost = hardware.step_cost(compiled)
    if cost is None:
        logging.info("%s: no cost analysis on this backend; no TFLOP/s or MFU", name)
        return None
    kind = jax.devices()[0].device_kind
    chip = hardware.chip_of(kind)
    if peak_tflops and peak_tflops > 0:
        peak, peak_name = peak_tflops * 1e12, "train.peak_tflops"
    else:
        peak, peak_name = (chip.peak_flops, chip.name) if chip else (None, kind)
    logging.info("%s: %.4g GFLOPs and %.4g MiB accessed per device per step (XLA cost analysis); peak %s",
                 name, cost.flops / 1e9, cost.bytes_accessed / 2**20,
                 f"{peak / 1e12:g} TFLOP/s per device ({peak_name})" if peak else f"unknown for {kind!r}: no MFU")
    if cost.loops:
        logging.info("%s: %d while loop(s) (scans over layers or steps); %.4g GFLOPs of their iterations after "
                     "the first added to the cost analysis, which counts a loop body once", name, cost.loops,
                     cost.loop_flops / 1e9)
    if cost.unknown_loops:
        logging.warning("%s: %d while loop(s) of unknown trip count, counted once: FLOPs, TFLOP/s and MFU are "
                        "lower bounds", name, cost.unknown_loops)
    return Throughput(cost, peak, peak_name)


def format_usage(usage: dict[str, float]) -> str:
    """The log line's throughput text: '1.23 TFLOP/s/device  MFU 4.5%  ' (empty without one)."""
    if not usage:
        return ""
    text = f"{usage['tflops_per_device']:.3g} TFLOP/s/device  "
    return text + (f"MFU {100 * usage['mfu']:.1f}%  " if "mfu" in usage else "")


class Progress:
    """The loop's bookkeeping: the metric writer, the checkpointer and the last step it saved, the
    steps/s clock (evals do not count against it), the totals, WORKDIR/progress.json and the
    PREEMPTED marker (rdance.core.status; process 0 writes them).

    ``per_step``: write every step's scalars (else one record per log line: the mean of the steps
    since the last, with steps/s and, given ``batch_size``, examples/s). ``describe(scalars)``:
    more text for the log line, after the loss.

    ``throughput`` (``measure_step``'s, from the compiled step's cost analysis): each log line's
    record also holds ``tflops_per_device`` (FLOPs per step per device x steps/s) and, where the
    peak is known, ``mfu``; with ``per_step`` they go in the record of the log line's step. The
    run ends with a one-line summary: steps, mean step time, TFLOP/s per device, MFU.
    """

    def __init__(self, workdir: str, writer: MetricWriter, ckpt: Checkpointer, config: dict, *, total: int,
                 start: int, batch_size: int | None = None, per_step: bool = False,
                 describe: Callable[[dict], str] | None = None, throughput: Throughput | None = None):
        self.workdir, self.writer, self.ckpt, self.config = workdir, writer, ckpt, config
        self.total, self.start, self.batch_size = total, start, batch_size
        self.per_step, self.describe, self.throughput = per_step, describe, throughput
        self.last_saved = start or None
        self.rate: float | None = None
        self.stepped = (0, 0.0)   # steps timed and their seconds, evals excluded: the summary's
        self.reset_clock(start)

    def reset_clock(self, step: int) -> None:
        self._clock = (step, time.perf_counter())

    def _report(self, phase: str, step: int) -> None:
        if self.writer.enabled:
            status.write_progress(self.workdir, phase, step, self.total, self.rate)

    def started(self) -> None:
        """A run steps in the workdir: an earlier preemption's marker is stale."""
        if self.writer.enabled:
            status.clear_preempted(self.workdir)

    def flush(self, pending: list[tuple[int, Any]]) -> None:
        """Fetch the metrics of the steps since the last flush, stop at a non-finite step, write
        them and log one line."""
        if not pending:
            return
        steps = [s for s, _ in pending]
        fetched = jax.device_get([m for _, m in pending])
        pending.clear()
        raise_on_non_finite(steps, fetched, self.ckpt.path_of(self.last_saved), self.ckpt.remedy)
        step, now = steps[-1], time.perf_counter()
        seconds = max(now - self._clock[1], 1e-9)
        self.rate = (step - self._clock[0]) / seconds
        self.stepped = (self.stepped[0] + step - self._clock[0], self.stepped[1] + seconds)
        self._clock = (step, now)
        usage = self.throughput.utilisation(1 / self.rate) if self.throughput and self.rate > 0 else {}
        if self.per_step:
            for s, metrics in zip(steps, fetched):
                self.writer.write(s, {k: float(v) for k, v in metrics.items() if k != "finite"}
                                  | (usage if s == step else {}))
            shown = {k: float(v) for k, v in fetched[-1].items() if k != "finite"}
        else:
            shown = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
            shown["steps_per_s"] = self.rate
            if self.batch_size:
                shown["examples_per_s"] = self.rate * self.batch_size
            self.writer.write(step, shown | usage)
        self._report("train", step)
        eta = (self.total - step) / self.rate if self.rate > 0 else float("nan")
        examples = f"{self.rate * self.batch_size:.1f} examples/s  " if self.batch_size else ""
        more = f"{self.describe(shown)}  " if self.describe else ""
        logging.info("step %d/%d  loss %.5f  %s%.2f steps/s  %s%sETA %s", step, self.total, shown["loss"], more,
                     self.rate, examples, format_usage(usage), format_seconds(eta))

    def summary(self) -> str | None:
        """One line on the steps run so far (evals excluded): their number, mean step time and,
        with a throughput, TFLOP/s per device and MFU; None before any step was timed."""
        steps, seconds = self.stepped
        if steps <= 0:
            return None
        line = f"trained {steps} steps: mean step time {1000 * seconds / steps:.2f} ms"
        if self.throughput:
            line += f", {self.throughput.describe(seconds / steps)}"
        return line

    def _log_summary(self) -> None:
        line = self.summary()
        if line:
            logging.info("%s", line)

    def evaluate(self, step: int, evaluator: Callable[[], dict[str, float]]) -> None:
        """Run ``evaluator``; write and log its scalars. Its time does not count against steps/s."""
        self._report("eval", step)
        scalars = evaluator()
        if scalars:
            self.writer.write(step, scalars)
            logging.info("eval at step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
        self.reset_clock(step)

    def save(self, step: int, state: Any, data_iter: Any) -> None:
        self.ckpt.save(step, state, data_iter, self.config)
        self.last_saved = step

    def preempted(self, step: int, state: Any, data_iter: Any) -> None:
        """Save ``step``, wait for it to be written, and say so: a log line for people, the
        PREEMPTED marker and progress.json for programs (the entrypoint exits EXIT_PREEMPTED)."""
        self.save(step, state, data_iter)
        self.ckpt.wait()
        logging.info("preempted: saved %s; rerun the same command to resume", self.ckpt.path_of(step))
        if self.writer.enabled:
            status.mark_preempted(self.workdir, step, self.ckpt.path_of(step))
        self._report("preempted", step)
        self._log_summary()

    def finished(self, step: int) -> None:
        self._report("done", step)
        self._log_summary()

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()


@dataclasses.dataclass
class Outcome:
    state: Any
    step: int
    preempted: bool


def run_loop(step_fn: Callable[[Any, Any], tuple[Any, dict]], state: Any, data_iter: Any, mesh,
             progress: Progress, evaluators: list[Evaluator], *, log_every: int,
             checkpoint_every: int) -> Outcome:
    """Step ``state`` from ``progress.start`` to ``progress.total`` with ``step_fn(state,
    global batch)`` over ``data_iter`` (host batches placed on ``mesh``); log every ``log_every``
    steps, run the evaluators when due, checkpoint every ``checkpoint_every`` steps and at the
    end. On SIGTERM, checkpoint and stop (``preempted``). Metrics are fetched only when a log,
    eval or checkpoint needs them, so the device runs ahead. Closes ``progress`` at the end."""
    preemption = PreemptionWatch()
    pending: list[tuple[int, dict]] = []
    step, last = progress.start, progress.total
    progress.started()
    try:
        while step < last:
            if preemption.should_stop(step):
                progress.flush(pending)
                progress.preempted(step, state, data_iter)
                return Outcome(state, step, True)
            state, metrics = step_fn(state, sharding.global_batch(next(data_iter), mesh))
            step += 1
            pending.append((step, metrics))
            if due(step, log_every, last):
                progress.flush(pending)
            for evaluator in evaluators:
                if evaluator.due(step, last):
                    progress.flush(pending)
                    progress.evaluate(step, lambda: evaluator(state, step))  # noqa: B023 (called at once)
            if due(step, checkpoint_every, last):
                progress.flush(pending)
                progress.save(step, state, data_iter)
        progress.finished(step)
        return Outcome(state, step, False)
    finally:
        preemption.close()
        progress.close()


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
    throughput = measure_step(compiled, "train_step", tc.get("peak_tflops", 0.0))

    evaluators = []
    if task.evaluate:
        evaluate = task.evaluate
        evaluators.append(Every(tc.eval_every, lambda state, step: {
            f"eval/{k}": float(v) for k, v in evaluate(state.params, step).items()}))
    progress = Progress(workdir, writer, ckpt, config.to_dict(), total=tc.steps, start=start,
                        batch_size=config.data.global_batch_size, throughput=throughput)
    out = run_loop(compiled, state, data_iter, mesh, progress, evaluators, log_every=tc.log_every,
                   checkpoint_every=tc.checkpoint_every)
    return Result(out.state, out.step, out.preempted, memory)
