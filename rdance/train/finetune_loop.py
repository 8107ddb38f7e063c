"""The fine-tuning loop: generator and frozen RM on one mesh, the Best-of-N reference bank, the
compiled ReFL/RWR step, monitors and evals, checkpoints with EMA, resume, export.

It reads top to bottom like the job it runs: build the mesh and the setup (both models on it,
the step settings, the state layout and the step: ``finetune_setup.build``, which the fit check
builds abstract); pick the prompts; load or build the reference bank; build the examples;
restore the latest checkpoint or start from the pretrained generator; compile the step ahead of
time; then step, log, evaluate and checkpoint until done or preempted; export the generator.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from rdance.core import config_checks, sharding
from rdance.data.pipeline import host_batches
from rdance.diffusion import samples
from rdance.train import bank as banklib, lora, prompt_eval
from rdance.train.checkpoint import Checkpointer
from rdance.train.finetune_data import CaptionImages, FinetuneExamples, read_prompts
from rdance.train.finetune_step import FinetuneState, StepSettings
from rdance.train.finetune_setup import build, compiler_options
from rdance.train.generator_eval import Sampler, place
from rdance.train.host import agree, sync, to_host
from rdance.train.loop import Progress, batch_spec, due, measure_step, run_loop
from rdance.train.metrics import MetricWriter
from rdance.train.monitors import image_grid
from rdance.train.step import log_memory, memory_per_device


NON_FINITE_REMEDY = "Lower optim.learning_rate or refl.scale, or set optim.grad_clip_norm"

# Distinct anchor pairs per training prompt (examples are drawn lazily; only the index space grows).
EXAMPLES_PER_PROMPT = 4096


@dataclasses.dataclass
class Result:
    state: FinetuneState
    step: int
    preempted: bool
    compiled_memory: dict
    bank: banklib.ReferenceBank | None


@dataclasses.dataclass
class Prompts:
    train: list[str]
    heldout: list              # prompt strings, or the generator's own held-out items (world scenes)

    @property
    def heldout_text(self) -> list[str]:
        return [h if isinstance(h, str) else h.prompt for h in self.heldout]


def load_prompts(config, gen) -> Prompts:
    """The prompt file's prompts (data.prompt_file, data.eval_prompt_file), else the generator's own."""
    d = config.data
    if not d.prompt_file:
        return Prompts(*gen.prompts(d))
    train = read_prompts(d.prompt_file)
    heldout = read_prompts(d.eval_prompt_file) if d.eval_prompt_file else train[: d.eval_prompts]
    return Prompts(train, heldout)


def anchor_source(config, gen, length: int):
    a = config.anchor
    if a.weight <= 0:
        return None
    if a.path:
        samples.require_stills(gen.image_shape, f"anchor.path={a.path}",
                               "set anchor.weight=0 (the anchor takes caption-image pairs only)")
        return CaptionImages(a.path, *samples.frame_size(gen.image_shape))
    pairs = gen.caption_images(length, a.seed)
    if pairs is None:
        raise ValueError("anchor.weight > 0 needs anchor.path (a JSONL of prompt/image pairs) for this generator")
    return pairs


def reference_bank(config, workdir, prompts, gen, sampler: Sampler, start, frozen, rm, rm_tokens,
                   mesh) -> banklib.ReferenceBank:
    """Load WORKDIR/bank, or build it from the starting generator (``start``: the trainable
    parameters before any update) and write it."""
    b = config.bank
    settings = {"num_samples": b.num_samples, "top_k": b.top_k, "select": b.select, "seed": b.seed,
                "num_steps": config.sampler.num_steps, "generator": config.generator.path,
                "transformer": config.generator.transformer_path, "reward": config.reward.path,
                "prompts": banklib.prompts_digest(prompts)}
    directory = os.path.join(workdir, "bank")
    if agree(banklib.exists(directory)):
        logging.info("reusing the reference bank in %s", directory)
        return banklib.load(directory, settings)
    logging.info("building the reference bank: %d prompts x %d samples, %s-%d by round-robin wins",
                 len(prompts), b.num_samples, b.select, b.top_k)
    started = time.perf_counter()
    gen_tokens = gen.tokenize(prompts)
    score = jax.jit(rm.pairwise_fn)

    def sample_fn(prompt_index, sample_ids):
        return sampler(start, frozen, {k: v[prompt_index] for k, v in gen_tokens.items()}, sample_ids, b.seed)

    def score_fn(prompt_index, refs, images):
        n = len(prompt_index)
        pad = -n % b.chunk
        rows = np.concatenate([prompt_index, np.repeat(prompt_index[-1:], pad)])
        pad_images = lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])  # noqa: E731
        tokens = {k: place(v[rows], mesh) for k, v in rm_tokens.items()}
        out = score(rm.params, tokens, place(pad_images(refs), mesh), place(pad_images(images), mesh))
        return to_host(out)[:n]

    bank = banklib.build(prompts, sample_fn, score_fn, num_samples=b.num_samples, top_k=b.top_k,
                         how=b.select, chunk=b.chunk, settings=settings)
    if jax.process_index() == 0:
        banklib.save(bank, directory)
    sync("bank_written")
    logging.info("reference bank built in %.1f s; mean top win count %.2f of %d", time.perf_counter() - started,
                 float(np.take_along_axis(bank.wins, bank.chosen[:, :1], 1).mean()), b.num_samples - 1)
    return bank


def save_arrays_from_one_replica() -> None:
    """Orbax writes a replicated array from all its replicas at once by slicing it with a program
    compiled per shape and sharding. On a CPU host, where every "device" shares one process,
    that only costs: the first checkpoint of a generator with hundreds of parameter shapes spent
    minutes compiling slices. There, each array is written from its first replica instead."""
    if jax.default_backend() == "cpu":
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def finetune(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Result:
    """Run (or resume) the fine-tuning job of ``config`` in ``workdir``; ``devices`` defaults to all."""
    config_checks.check_bounds(config)
    prompt_eval.check(config)      # a bad eval.* fails here, before anything is loaded or compiled
    tc = config.train
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    logging.info("mesh %s over %d devices, %d process(es)", dict(mesh.shape), mesh.size, jax.process_count())
    # Both models on the one mesh, the step settings, what trains, the state layout and the step.
    setup = build(config, mesh, config.mesh.rules)
    gen, rm, paradigm, settings, graphdef = setup.gen, setup.rm, setup.paradigm, setup.settings, setup.graphdef
    trainable, frozen = setup.trainable, setup.frozen

    # One compiled sampler serves the reference bank, the judge evals and the sample grids.
    sampler = Sampler(gen, graphdef, mesh, config.sampler.num_steps, config.monitor.eval_chunk,
                      config.monitor.eval_seed, effective=effective_params(settings))
    prompts = load_prompts(config, gen)
    rm_tokens = rm.tokens(prompts.train, gen.image_shape, pairwise=paradigm == "pairwise",
                          criteria=config.reward.criteria or None)
    bank = None
    if paradigm == "pairwise":
        bank = reference_bank(config, workdir, prompts.train, gen, sampler, trainable, frozen, rm, rm_tokens, mesh)

    # Examples: prompt i mod P with its references, and anchor pair i. The length does not depend
    # on train.steps, so a longer or shorter run sees the same batches in the same order.
    b = config.data.global_batch_size
    length = len(prompts.train) * EXAMPLES_PER_PROMPT
    source = FinetuneExamples(length, gen.tokenize(prompts.train), rm_tokens,
                              bank.images if bank is not None else None,
                              anchor_source(config, gen, length), gen.tokenize)
    data = host_batches(source, global_batch_size=b, num_steps=tc.steps, seed=config.data.seed)
    data_iter = iter(data)

    save_arrays_from_one_replica()
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints,
                        async_save=tc.async_checkpoints, remedy=NON_FINITE_REMEDY)
    writer = MetricWriter(workdir)
    restored = ckpt.restore_latest(setup.state_spec, data_iter, config.to_dict())
    if restored is None:
        state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(trainable)
        start = 0
    else:
        start, state = restored
        logging.info("resuming from %s", ckpt.path_of(start))
    writer.truncate_after(start if restored else None)
    del trainable
    setup.trainable = None

    lowered = setup.lower(batch_spec(next(iter(data)), mesh))
    compiled = lowered.compile(compiler_options=compiler_options(tc.compiler_options))
    log_memory(compiled, "finetune_step")
    memory = memory_per_device(compiled)
    throughput = measure_step(compiled, "finetune_step", tc.get("peak_tflops", 0.0))

    evaluators = [Monitor(config, gen, sampler, prompts, writer, frozen)]
    if config.eval.prompts:
        evaluators.append(prompt_eval.PromptFileEval(config, gen, sampler, writer, frozen, workdir))
    progress = Progress(workdir, writer, ckpt, config.to_dict(), total=tc.steps, start=start, per_step=True,
                        describe=lambda m: f"reward {m['reward/mean']:.4f} (std {m['reward/std']:.4f}, "
                                           f"window std {m['reward/window_std']:.4f})",
                        throughput=throughput)
    for evaluator in evaluators:
        if start == 0 and evaluator.due(0, 0):  # the starting generator's numbers, for the curves
            progress.evaluate(0, lambda: evaluator(state, 0))  # noqa: B023 (called at once)
    out = run_loop(lambda state, batch: compiled(state, batch, frozen, rm.params), state, data_iter, mesh,
                   progress, evaluators, log_every=tc.log_every, checkpoint_every=tc.checkpoint_every)
    if not out.preempted:
        export(config, workdir, gen, out.state, frozen, settings)
    return Result(out.state, out.step, out.preempted, memory, bank)


def effective_params(settings: StepSettings):
    """(trainable, frozen) -> the generator's full parameters."""
    if settings.lora_scale is None:
        return lambda trainable, frozen: trainable
    return lambda trainable, frozen: lora.merge(frozen["base"], trainable, settings.lora_scale)


def export(config, workdir: str, gen, state: FinetuneState, frozen, settings: StepSettings) -> str:
    """The fine-tuned generator (EMA parameters unless export.use_ema is off) to WORKDIR/export."""
    folder = os.path.join(workdir, "export")
    trainable = state.ema if config.export.use_ema else state.params
    params = to_host(jax.jit(effective_params(settings))(trainable, frozen))
    if jax.process_index() == 0:
        gen.export(params, folder)
    sync("finetuned_generator_exported")
    logging.info("exported the fine-tuned generator to %s", folder)
    return folder


class Monitor:
    """Evals during fine-tuning: the generator's held-out evaluator (the world's: the judge's
    alignment on held-out scenes), current and EMA parameters, every ``monitor.eval_every`` steps,
    and a grid of samples every ``grid_every`` (0: never); both also after the last step when they
    run at all. An evaluator of the loop."""

    def __init__(self, config, gen, sampler: Sampler, prompts: Prompts, writer: MetricWriter, frozen):
        m = config.monitor
        self.config, self.writer, self.sampler, self.frozen = config, writer, sampler, frozen
        self.judge = gen.heldout_evaluator(self.sampler, prompts.heldout, m.eval_samples)
        grid_prompts = prompts.heldout_text[: m.grid_size]
        self.grid_tokens, self.grid_ids = gen.tokenize(grid_prompts), np.arange(len(grid_prompts))
        self.which = {"current": ("params",), "ema": ("ema",), "both": ("params", "ema")}[m.eval_params]

    def _due(self, step: int, last_step: int) -> tuple[bool, bool]:
        """(grid, judge): what is due after ``step``."""
        m = self.config.monitor
        return (due(step, m.grid_every, last_step, zero_is_never=True),
                due(step, m.eval_every, last_step, zero_is_never=True))

    def due(self, step: int, last_step: int) -> bool:
        return any(self._due(step, last_step))

    def __call__(self, state: FinetuneState, step: int) -> dict[str, float]:
        """Write the grids due at ``step``; return the judge's scalars."""
        grid, judge = self._due(step, self.config.train.steps)
        scalars = {}
        for which in self.which:
            suffix = "" if which == "params" else "_ema"
            trainable = getattr(state, which)
            if judge and self.judge is not None:
                values, _ = self.judge(trainable, self.frozen)
                scalars.update({f"eval/{k}{suffix}": v for k, v in values.items()})
            if grid:
                images = self.sampler(trainable, self.frozen, self.grid_tokens, self.grid_ids)
                self.writer.write_image(step, f"samples{suffix}", image_grid(images, self.config.monitor.grid_columns))
        return dict(sorted(scalars.items()))
