"""The fine-tuning loop: generator and frozen RM on one mesh, the Best-of-N reference bank, the
compiled ReFL/RWR step, monitors and evals, checkpoints with EMA, resume, export.

It reads top to bottom like the job it runs: build the mesh and load both models onto it; pick
the prompts; load or build the reference bank; build the examples and the abstract state;
restore the latest checkpoint or start from the pretrained generator; compile the step ahead of
time; then step, log, evaluate and checkpoint until done or preempted; export the generator.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import config_checks, sharding
from rdance.data.pipeline import host_batches
from rdance.diffusion import generator as genlib
from rdance.reward.api import RewardModel
from rdance.train import bank as banklib, lora
from rdance.train.checkpoint import Checkpointer, PreemptionWatch
from rdance.train.finetune_data import (CaptionImages, FinetuneExamples, RenderedCaptions, read_prompts,
                                        world_prompt_split)
from rdance.train.finetune_step import FinetuneState, StepSettings, make_step
from rdance.train.generator_eval import JudgeEval, Sampler, place
from rdance.train.host import agree, sync, to_host
from rdance.train.loop import batch_spec, raise_on_non_finite
from rdance.train.metrics import MetricWriter, format_seconds
from rdance.train.monitors import image_grid
from rdance.train.optim import make_optimizer
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
    heldout: list              # world Scenes (judged) or prompt strings
    judged: bool               # whether the held-out prompts are world scenes the judge can score


def load_prompts(config) -> Prompts:
    d = config.data
    if config.generator.kind == "world" and not d.prompt_file:
        train, heldout = world_prompt_split(d.prompt_seed, d.train_prompts, d.eval_prompts)
        return Prompts([s.prompt for s in train], heldout, True)
    if not d.prompt_file:
        raise ValueError("data.prompt_file is required for a non-world generator (a text file, one prompt per line)")
    train = read_prompts(d.prompt_file)
    heldout = read_prompts(d.eval_prompt_file) if d.eval_prompt_file else train[: d.eval_prompts]
    return Prompts(train, heldout, False)


def step_settings(config, paradigm: str) -> StepSettings:
    r, w = config.refl, config.rwr
    return StepSettings(
        algo=config.algo, paradigm=paradigm, num_steps=config.sampler.num_steps, window=r.window,
        grad_steps=r.grad_steps,
        samples_per_prompt=config.data.samples_per_prompt, grad_accum=config.optim.grad_accum_steps,
        reward_scale=r.scale, refl_loss=r.loss, hinge_margin=r.hinge_margin, references=r.references,
        shift=r.shift,
        rwr_temperature=w.temperature, anchor_weight=config.anchor.weight,
        t_sampling=config.sampler.t_sampling, collapse_eps=config.monitor.collapse_eps,
        ema_decay=config.ema.decay, ema_warmup=config.ema.warmup,
        lora_scale=config.lora.alpha / config.lora.rank if config.lora.rank else None)


def check_batch(config, mesh) -> None:
    """Batch sizes that the mesh, the hosts and the accumulation can split, or a clear error."""
    b, m = config.data.global_batch_size, config.optim.grad_accum_steps
    ways = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
    if m < 1 or b % m:
        raise ValueError(f"data.global_batch_size={b} does not split into optim.grad_accum_steps={m} micro-batches")
    if (b // m) % ways:
        raise ValueError(f"micro-batches of {b // m} prompts do not split over the {ways} data-parallel "
                         f"devices of mesh {dict(mesh.shape)}; make global_batch_size / grad_accum_steps "
                         f"a multiple of {ways}")


def anchor_source(config, gen, length: int):
    a = config.anchor
    if a.weight <= 0:
        return None
    if a.path:
        return CaptionImages(a.path, *gen.image_shape[:2])
    if config.generator.kind != "world":
        raise ValueError("anchor.weight > 0 needs anchor.path (a JSONL of prompt/image pairs) for this generator")
    return RenderedCaptions(length, seed=a.seed, image_size=gen.image_shape[0])


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


def compiler_options(spec: str) -> dict:
    """'name=value,name=value' (XLA options for the step's compile) -> a dict; '' -> {}."""
    options = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not name:
            raise ValueError(f"train.compiler_options item {item!r}: write name=value")
        lowered = value.lower()
        options[name] = lowered == "true" if lowered in ("true", "false") else \
            int(value) if value.lstrip("-").isdigit() else value
    return options


def save_arrays_from_one_replica() -> None:
    """Orbax writes a replicated array from all its replicas at once by slicing it with a program
    compiled per shape and sharding. On a CPU host, where every "device" shares one process,
    that only costs: the first checkpoint of a generator with hundreds of parameter shapes spent
    minutes compiling slices. There, each array is written from its first replica instead."""
    if jax.default_backend() == "cpu":
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def reward_paradigm(rm: RewardModel) -> str:
    """How the step calls the RM: 'pairwise' (against references) or 'pointwise'."""
    return "pairwise" if rm.paradigm == "pairwise" else "pointwise"


def sharded_shapes(make_model, mesh, rules):
    """(graphdef, parameters as a pure dict of ShapeDtypeStructs sharded on ``mesh`` by ``rules``)
    of the module ``make_model()`` builds; shapes only, nothing is allocated."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make_model), nnx.Param)
    shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh, rules))
    return graphdef, sharding.with_shardings(nnx.to_pure_dict(abstract), shardings)


def lora_layout(config, base, base_shardings):
    """LoRA's initialiser ``base -> factors`` (zero B: the starting generator) and the factors'
    shardings; ``base`` may be arrays or ShapeDtypeStructs."""
    def init_lora(base):
        return lora.init(base, config.lora.rank, config.lora.targets, jax.random.key(config.seed))
    return init_lora, lora.shardings(base_shardings, jax.eval_shape(init_lora, base))


def state_layout(config, tx, trainable, trainable_shardings, mesh):
    """The fine-tuning state of ``trainable`` (arrays or ShapeDtypeStructs): its initialiser
    ``params -> FinetuneState``, its shardings and its sharded ShapeDtypeStructs."""
    samples = config.data.global_batch_size * config.data.samples_per_prompt

    def init_state(params) -> FinetuneState:
        return FinetuneState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             ema=jax.tree.map(jnp.copy, params),
                             rng=jax.random.key_data(jax.random.key(config.seed)),
                             rewards=jnp.zeros((config.monitor.window, samples), jnp.float32))

    abstract_state = jax.eval_shape(init_state, trainable)
    replicated = NamedSharding(mesh, P())
    opt_shardings = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, abstract_state.opt_state, trainable_shardings,
        transform_non_params=lambda _: replicated)
    state_shardings = FinetuneState(step=replicated, params=trainable_shardings, opt_state=opt_shardings,
                                    ema=trainable_shardings, rng=replicated, rewards=replicated)
    state_spec = sharding.with_shardings(abstract_state, state_shardings)
    return init_state, state_shardings, state_spec


def lower_step(gen, graphdef, rm: RewardModel, settings: StepSettings, tx, schedule, mesh,
               state_spec, batch, frozen, rm_params) -> jax.stages.Lowered:
    """The fine-tuning step lowered for the sharded ShapeDtypeStructs of its arguments (state
    donated, metrics replicated), ready to compile ahead of time."""
    step_fn = make_step(gen, graphdef, rm.pairwise_fn if reward_paradigm(rm) == "pairwise" else rm.pointwise_fn,
                        settings, tx, schedule, mesh)
    in_shardings = sharding.shardings_of((state_spec, batch, frozen, rm_params))
    jitted = jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(in_shardings[0], NamedSharding(mesh, P())),
                     donate_argnums=0)
    with sharding.activations_on(mesh):   # activations keep the batch split (FSDP)
        return jitted.lower(state_spec, batch, frozen, rm_params)


def finetune(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Result:
    """Run (or resume) the fine-tuning job of ``config`` in ``workdir``; ``devices`` defaults to all."""
    config_checks.check_bounds(config)
    tc = config.train
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    rules = config.mesh.rules
    logging.info("mesh %s over %d devices, %d process(es)", dict(mesh.shape), mesh.size, jax.process_count())
    check_batch(config, mesh)
    if not config.generator.path or not config.reward.path:
        raise ValueError("set generator.path (a generator folder) and reward.path (a reward model folder)")

    # Both models on the one mesh: the generator's trainable and frozen parts, and the frozen RM.
    gen = genlib.load_generator(config.generator, mesh, rules)
    rm = RewardModel.from_pretrained(config.reward.path, mesh=mesh, dtype=jnp.dtype(config.reward.dtype),
                                     rules=rules, remat_policy=config.reward.remat_policy or None)
    paradigm = reward_paradigm(rm)
    settings = step_settings(config, paradigm)
    graphdef, base_spec = sharded_shapes(gen.make_model, mesh, rules)
    base_shardings = sharding.shardings_of(base_spec)
    base = gen.initial_params(mesh, rules)
    if base is None:
        raise ValueError(f"{config.generator.path} holds no trained generator to fine-tune")
    base = jax.device_put(base, base_shardings)
    frozen = dict(gen.frozen)
    if settings.lora_scale is not None:
        frozen["base"] = base

    # What trains: the generator's parameters, or LoRA factors (zero B: the starting generator).
    if settings.lora_scale is None:
        trainable, trainable_shardings = base, base_shardings
    else:
        init_lora, trainable_shardings = lora_layout(config, base, base_shardings)
        trainable = jax.jit(init_lora, out_shardings=trainable_shardings)(base)
        logging.info("LoRA rank %d on %d kernels: %d trainable parameters", config.lora.rank,
                     len(lora.targets(base, config.lora.targets)),
                     sum(x.size for x in jax.tree.leaves(trainable)))

    # One compiled sampler serves the reference bank, the judge evals and the sample grids.
    sampler = Sampler(gen, graphdef, mesh, config.sampler.num_steps, config.monitor.eval_chunk,
                      config.monitor.eval_seed, effective=effective_params(settings))
    prompts = load_prompts(config)
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

    # The state: trainable parameters, optimizer, EMA, reward window.
    tx, schedule = make_optimizer(config.optim, tc.steps)
    init_state, state_shardings, state_spec = state_layout(config, tx, trainable, trainable_shardings, mesh)

    save_arrays_from_one_replica()
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints,
                        async_save=tc.async_checkpoints, remedy=NON_FINITE_REMEDY)
    writer = MetricWriter(workdir)
    restored = ckpt.restore_latest(state_spec, data_iter, config.to_dict())
    if restored is None:
        state = jax.jit(init_state, out_shardings=state_shardings)(trainable)
        start = 0
    else:
        start, state = restored
        logging.info("resuming from %s", ckpt.path_of(start))
    writer.truncate_after(start if restored else None)
    del trainable

    lowered = lower_step(gen, graphdef, rm, settings, tx, schedule, mesh, state_spec,
                         batch_spec(next(iter(data)), mesh), sharding.spec_of(frozen), sharding.spec_of(rm.params))
    compiled = lowered.compile(compiler_options=compiler_options(tc.compiler_options))
    log_memory(compiled, "finetune_step")
    memory = memory_per_device(compiled)

    monitor = Monitor(config, gen, sampler, prompts, writer)
    if start == 0:  # the starting generator's numbers, for the curves
        monitor.evaluate(0, state, frozen, *monitor.due(0, True))
    preemption = PreemptionWatch()
    pending: list[tuple[int, dict]] = []
    last_saved = start if start else None
    step, clock = start, (start, time.perf_counter())
    try:
        while step < tc.steps:
            if preemption.should_stop(step):
                clock = _flush(pending, writer, ckpt, last_saved, clock, tc.steps)
                ckpt.save(step, state, data_iter, config.to_dict())
                ckpt.wait()
                logging.info("preempted: saved %s; rerun the same command to resume", ckpt.path_of(step))
                return Result(state, step, True, memory, bank)
            batch = sharding.global_batch(next(data_iter), mesh)
            state, metrics = compiled(state, batch, frozen, rm.params)
            step += 1
            pending.append((step, metrics))
            is_last = step == tc.steps
            if step % tc.log_every == 0 or is_last:
                clock = _flush(pending, writer, ckpt, last_saved, clock, tc.steps)
            grid, judge = monitor.due(step, is_last)
            if grid or judge:
                clock = _flush(pending, writer, ckpt, last_saved, clock, tc.steps)
                monitor.evaluate(step, state, frozen, grid=grid, judge=judge)
                clock = (clock[0], time.perf_counter())  # evals do not count against steps/s
            if step % tc.checkpoint_every == 0 or is_last:
                clock = _flush(pending, writer, ckpt, last_saved, clock, tc.steps)
                ckpt.save(step, state, data_iter, config.to_dict())
                last_saved = step
        export(config, workdir, gen, state, frozen, settings)
        return Result(state, step, False, memory, bank)
    finally:
        preemption.close()
        ckpt.close()
        writer.close()


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
    """Evals during fine-tuning: the judge's alignment on held-out world prompts (current and EMA
    parameters) every ``monitor.eval_every`` steps, and a grid of samples every ``grid_every``."""

    def __init__(self, config, gen, sampler: Sampler, prompts: Prompts, writer: MetricWriter):
        m = config.monitor
        self.config, self.writer, self.sampler = config, writer, sampler
        self.judge = JudgeEval(self.sampler, gen, prompts.heldout, m.eval_samples) if prompts.judged else None
        grid_prompts = [s.prompt if prompts.judged else s for s in prompts.heldout][: m.grid_size]
        self.grid_tokens, self.grid_ids = gen.tokenize(grid_prompts), np.arange(len(grid_prompts))
        self.which = {"current": ("params",), "ema": ("ema",), "both": ("params", "ema")}[m.eval_params]

    def due(self, step: int, is_last: bool) -> tuple[bool, bool]:
        """(grid, judge): what is due after ``step``; both run at the end when they run at all."""
        m = self.config.monitor
        return (bool(m.grid_every) and (step % m.grid_every == 0 or is_last),
                bool(m.eval_every) and (step % m.eval_every == 0 or is_last))

    def evaluate(self, step: int, state: FinetuneState, frozen, grid: bool = True, judge: bool = True) -> None:
        scalars = {}
        for which in self.which:
            suffix = "" if which == "params" else "_ema"
            trainable = getattr(state, which)
            if judge and self.judge is not None:
                values, _ = self.judge(trainable, frozen)
                scalars.update({f"eval/{k}{suffix}": v for k, v in values.items()})
            if grid:
                images = self.sampler(trainable, frozen, self.grid_tokens, self.grid_ids)
                self.writer.write_image(step, f"samples{suffix}", image_grid(images, self.config.monitor.grid_columns))
        if scalars:
            self.writer.write(step, scalars)
            logging.info("eval at step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in sorted(scalars.items())))


def _flush(pending, writer: MetricWriter, ckpt: Checkpointer, last_saved, clock, total: int):
    """Fetch the metrics of the steps since the last flush, stop on a non-finite step, write each
    step's scalars, and log one line; returns the new (step, time) clock."""
    if not pending:
        return clock
    fetched = jax.device_get([m for _, m in pending])
    steps = [s for s, _ in pending]
    pending.clear()
    raise_on_non_finite(steps, fetched, ckpt.path_of(last_saved), NON_FINITE_REMEDY)
    for step, metrics in zip(steps, fetched):
        writer.write(step, {k: float(v) for k, v in metrics.items() if k != "finite"})
    step, now = steps[-1], time.perf_counter()
    rate = (step - clock[0]) / max(now - clock[1], 1e-9)
    last = fetched[-1]
    logging.info("step %d/%d  loss %.5f  reward %.4f (std %.4f, window std %.4f)  %.2f steps/s  ETA %s",
                 step, total, float(last["loss"]), float(last["reward/mean"]), float(last["reward/std"]),
                 float(last["reward/window_std"]), rate, format_seconds((total - step) / rate if rate > 0 else float("nan")))
    return step, now
