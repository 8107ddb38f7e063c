"""The fine-tuning setup, built once: what ``finetune`` trains and what the fit check lowers.

    setup = build(config, mesh, rules)                  # training: weights loaded onto the mesh
    setup = build(config, mesh, rules, abstract=True)   # the fit check: shapes only, nothing read
    lowered = setup.lower(batch)                        # batch: sharded ShapeDtypeStructs

Both modes open the generator and the frozen RM through their own constructors (real, or
abstract: sharded ShapeDtypeStructs from config files, ``Generator.abstract`` /
``RewardModel.abstract``), derive the step settings, the trainable parameters (the generator's
or LoRA factors), the optimizer and the state layout the same way, and jit the same step with the
same shardings. So the program the fit check measures is the program training compiles
(tests/train/test_fit_check.py compares their text and memory).
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.diffusion import generator as genlib, samples
from rdance.models import attention as attnlib
from rdance.reward.api import RewardModel, check_settings
from rdance.reward.folder import write_model_folder
from rdance.train import lora
from rdance.train.finetune_step import FinetuneState, StepSettings, make_step
from rdance.train.optim import make_optimizer


@dataclasses.dataclass
class Setup:
    """Everything the fine-tuning step is made of; arrays in training, sharded ShapeDtypeStructs
    in the abstract (fit check) build."""
    mesh: jax.sharding.Mesh
    gen: genlib.Generator
    rm: RewardModel
    paradigm: str                   # how the step calls the RM: 'pairwise' or 'pointwise'
    settings: StepSettings
    graphdef: Any                   # the generator's trainable module
    base: Any                       # the generator's parameters
    trainable: Any                  # what trains: ``base``, or LoRA factors
    frozen: dict                    # what the step takes frozen: the generator's parts (+ "base" with LoRA)
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_state: Callable[[Any], FinetuneState]
    state_shardings: FinetuneState
    state_spec: FinetuneState       # sharded ShapeDtypeStructs of the state
    step_fn: Callable               # the pure step(state, batch, frozen, rm_params) -> (state, metrics)
    scratch: Any = None             # a folder the abstract RM's tokenizer lives in, kept while this lives
    rules: Any = None               # the mesh rules (config.mesh.rules); 'tokens' among them shards sequences

    def jit_step(self, batch) -> Callable:
        """The step jitted for a batch like ``batch`` (arrays or structs): state donated, every
        input placed as it is here, metrics replicated."""
        in_shardings = sharding.shardings_of((self.state_spec, batch, self.frozen, self.rm.params))
        return jax.jit(self.step_fn, in_shardings=in_shardings,
                       out_shardings=(in_shardings[0], NamedSharding(self.mesh, P())), donate_argnums=0)

    def lower(self, batch) -> jax.stages.Lowered:
        """The step lowered for a batch like ``batch``, ready to compile ahead of time."""
        batch = sharding.spec_of(batch)
        # Activations keep the batch split (FSDP) and, where the rules say, the token axis (sequence sharding).
        with sharding.activations_on(self.mesh, self.rules):
            return self.jit_step(batch).lower(self.state_spec, batch, sharding.spec_of(self.frozen),
                                              sharding.spec_of(self.rm.params))

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by part, as the fit check reports them."""
        if self.settings.lora_scale is None:
            counts = {"generator (trains)": _count(self.base)}
        else:
            counts = {"generator (frozen base)": _count(self.base), "LoRA factors (train)": _count(self.trainable)}
        counts.update({f"{name} (frozen)": _count(tree) for name, tree in self.gen.frozen.items()})
        counts["reward model (frozen)"] = _count(self.rm.params)
        return counts


def build(config: ml_collections.ConfigDict, mesh, rules, abstract: bool = False) -> Setup:
    """The fine-tuning setup of ``config`` on ``mesh``: with ``abstract``, from config files alone
    (no weights read, nothing allocated), else with the pretrained generator and RM loaded."""
    check_batch(config, mesh)
    if not abstract and (not config.generator.path or not config.reward.path):
        raise ValueError("set generator.path (a generator folder) and reward.path (a reward model folder)")
    gen = genlib.open_generator(config.generator, mesh, rules, abstract=abstract)
    scratch = tempfile.TemporaryDirectory() if abstract else None
    rm = open_reward(config, mesh, rules, scratch.name if scratch else None)
    check_frames(gen, rm)
    paradigm = reward_paradigm(rm)
    settings = step_settings(config, paradigm)

    # The generator's parameters on the mesh (or their sharded shapes), and what trains.
    graphdef, base = sharding.sharded_shapes(gen.make_model, mesh, rules)
    base_shardings = sharding.shardings_of(base)
    if not abstract:
        params = gen.initial_params(mesh, rules)
        if params is None:
            raise ValueError(f"{config.generator.path} holds no trained generator to fine-tune")
        base = jax.device_put(params, base_shardings)
    frozen = dict(gen.frozen)
    if settings.lora_scale is None:   # full fine-tuning
        trainable, trainable_shardings = base, base_shardings
    else:                             # LoRA factors, zero B: the starting generator
        frozen["base"] = base
        init_lora, trainable_shardings = lora_layout(config, base, base_shardings)
        if abstract:
            trainable = sharding.with_shardings(jax.eval_shape(init_lora, base), trainable_shardings)
        else:
            trainable = jax.jit(init_lora, out_shardings=trainable_shardings)(base)
            logging.info("LoRA rank %d on %d kernels: %d trainable parameters", config.lora.rank,
                         len(lora.targets(base, config.lora.targets)),
                         sum(x.size for x in jax.tree.leaves(trainable)))

    # The state (trainable parameters, optimizer, EMA, reward window) and the step.
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    init_state, state_shardings, state_spec = state_layout(config, tx, trainable, trainable_shardings, mesh)
    step_fn = make_step(gen, graphdef, rm.pairwise_fn if paradigm == "pairwise" else rm.pointwise_fn,
                        settings, tx, schedule, mesh)
    return Setup(mesh, gen, rm, paradigm, settings, graphdef, base, trainable, frozen, tx, schedule,
                 init_state, state_shardings, state_spec, step_fn, scratch, rules)


def open_reward(config, mesh, rules, scratch: str | None) -> RewardModel:
    """The frozen RM on ``mesh``: loaded from ``reward.path``, or (``scratch`` given: abstract)
    with sharded ShapeDtypeStructs for parameters, from ``reward.path``'s config files or from
    ``reward.architecture`` (a word-level tokenizer written to ``scratch``: token ids differ,
    shapes do not)."""
    r = config.reward
    kw = dict(mesh=mesh, dtype=jnp.dtype(r.dtype), rules=rules, remat=r.remat,
              attention=attnlib.from_config(r))
    if scratch is None:
        return RewardModel.from_pretrained(r.path, **kw)
    if r.path and os.path.isdir(r.path):
        return RewardModel.abstract(r.path, **kw)   # reward_config.json checked key by key, as from_pretrained does
    if r.get("architecture"):
        architecture = _as_dict(r.architecture)
        if "config" not in architecture:
            raise ValueError("reward.architecture needs 'config' (the InternVL config.json fields) and "
                             "optionally 'reward_config' (the RM settings)")
        folder = write_model_folder(ml_collections.ConfigDict({"architecture": architecture["config"]}),
                                    image_size=0, folder=os.path.join(scratch, "rm"))  # size: the config's
        settings = dict(architecture.get("reward_config") or {})
        check_settings(settings, "reward.architecture.reward_config", "correct it in the config")
        return RewardModel.abstract(folder, settings=settings, **kw)
    raise ValueError(f"reward.path={r.path!r} is not a folder and reward.architecture is empty: point "
                     "reward.path at a reward model folder or give reward.architecture")


def check_frames(gen: genlib.Generator, rm: RewardModel) -> None:
    """The frames the RM sees of each sample exist: a clip generator's samples have at least
    rm.video_frames frames (a still image is seen whole). Fails before anything compiles."""
    blank = np.broadcast_to(np.zeros((), np.uint8), gen.image_shape)   # nothing allocated
    try:
        rm.spec.frames_of(blank)
    except ValueError as err:
        raise ValueError(f"the reward model sees rm.video_frames={rm.spec.video_frames} frames of each clip "
                         f"({rm.spec.video_sampling}) but the generator makes {samples.describe(gen.image_shape)}: "
                         "raise generator.num_frames (4k + 1 frames) or use a reward model trained on fewer "
                         f"frames ({err})") from err


def reward_paradigm(rm: RewardModel) -> str:
    """How the step calls the RM: 'pairwise' (against references) or 'pointwise'."""
    return "pairwise" if rm.paradigm == "pairwise" else "pointwise"


def step_settings(config, paradigm: str) -> StepSettings:
    r, w = config.refl, config.rwr
    return StepSettings(
        algo=config.algo, paradigm=paradigm, num_steps=config.sampler.num_steps, window=r.window,
        grad_steps=r.grad_steps,
        samples_per_prompt=config.data.samples_per_prompt, grad_accum=config.optim.grad_accum_steps,
        reward_scale=r.scale, refl_loss=r.loss, hinge_margin=r.hinge_margin, references=r.references,
        shift=r.shift,
        rwr_temperature=w.temperature, anchor_weight=config.anchor.weight,
        anchor_drop_captions=config.anchor.drop_captions,
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


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _as_dict(value) -> dict:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value)
