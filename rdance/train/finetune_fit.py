"""The fine-tuning step of a config, lowered from shapes alone for any devices: what
``rdance.run.fit_check --entry=rdance.run.finetune`` compiles for a TPU slice and measures against its HBM.

Nothing is loaded or allocated. The generator and the reward model come from their config files:
the folders ``generator.path`` and ``reward.path`` name when they exist (only config.json,
reward_config.json and the tokenizer are read, never weights), else ``generator.architecture``
(FLUX: a dict of the diffusers folder's config files, see experiments/finetune_flux_dev.py) and
``reward.architecture`` (``config``: the InternVL config.json, ``reward_config``: the RM settings).
The state, the frozen arrays and the batch are ShapeDtypeStructs sharded on the mesh, and the step
is the one ``finetune`` compiles (``finetune_loop.lower_step``): the rollout without gradient,
the graded step, the VAE decode, the RM (forward and backward to the pixels), the text encoders
run on the step's prompts, the anchor loss, the optimizer and the EMA. The reference bank, the
sampler for evals and sample grids, and host-side tokenisation are not in it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.diffusion import flow_match, generator as genlib
from rdance.diffusion.flux_generator import FluxGenerator
from rdance.models.flux import config as cfglib
from rdance.models.flux.clip import CLIPTextConfig, CLIPTextModel
from rdance.models.flux.t5 import T5Config, T5Encoder
from rdance.models.flux.transformer import FluxConfig
from rdance.models.flux.vae import AutoencoderKL, VAEConfig
from rdance.models.internvl.api import InternVL, abstract_model, checkpoint_policy
from rdance.models.internvl.config import load_config
from rdance.reward import folder as rm_folder
from rdance.reward.api import RewardModel, check_settings, read_settings
from rdance.train import finetune_loop as ft
from rdance.train.finetune_data import FinetuneExamples
from rdance.train.loop import batch_spec
from rdance.train.optim import make_optimizer

# A FLUX pipeline's config files, by the key generator.architecture gives each.
FLUX_FILES = {"transformer": "transformer/config.json", "vae": "vae/config.json",
              "scheduler": "scheduler/scheduler_config.json", "text_encoder": "text_encoder/config.json",
              "text_encoder_2": "text_encoder_2/config.json"}


@dataclasses.dataclass
class LoweredStep:
    lowered: jax.stages.Lowered
    compiler_options: dict      # train.compiler_options, as finetune compiles with them
    mesh: jax.sharding.Mesh
    params: dict[str, int]      # parameter count by part
    batch: str                  # what one step processes, in words


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _as_dict(value) -> dict:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value)


class FluxShapes(FluxGenerator):
    """A :class:`FluxGenerator` built from its config files alone, for compiling: the frozen text
    encoders and VAE are sharded ShapeDtypeStructs and prompts tokenize to zeros of the right
    length. It computes what FluxGenerator computes, but holds no weights and runs nothing; it is
    only lowered, never trained (no ``initial_params``: the trainable shapes come from
    ``make_model``)."""

    def __init__(self, files: dict, *, mesh, rules, height: int, width: int, guidance_scale: float,
                 max_sequence_length: int, dtype: str | None, remat: str, vae_remat: str = "full"):
        self.path = self.transformer_path = None
        self.mesh, self.rules = mesh, rules
        self.runtime = dict(dtype=dtype, remat=remat)
        self.cfg = cfglib.from_dict(FluxConfig, files["transformer"], **self.runtime)
        self.schedule = flow_match.ScheduleConfig.from_dict(files["scheduler"])
        self.guidance_scale, self.max_sequence_length = guidance_scale, max_sequence_length
        # The runtime fields FluxGenerator's loaders give each frozen part.
        parts = {"t5": (T5Config, T5Encoder, "text_encoder_2", dict(dtype=dtype)),
                 "clip": (CLIPTextConfig, CLIPTextModel, "text_encoder", dict(dtype=dtype)),
                 "vae": (VAEConfig, AutoencoderKL, "vae", dict(dtype=dtype, remat=vae_remat))}
        self._defs, self.frozen, configs = {}, {}, {}
        for name, (cfg_cls, model_cls, key, runtime) in parts.items():
            cfg = configs[name] = cfglib.from_dict(cfg_cls, files[key], **runtime)
            self._defs[name], self.frozen[name] = ft.sharded_shapes(lambda: model_cls(cfg, rngs=nnx.Rngs(0)), mesh, rules)
        self.vae_cfg, self.clip_length = configs["vae"], configs["clip"].max_position_embeddings
        self.latent_hw = flow_match.latent_hw(height, width, self.vae_cfg.downsample_factor)
        h, w = self.latent_hw
        self.image_shape = (height, width, 3)
        self.latent_shape = ((h // 2) * (w // 2), self.cfg.in_channels)
        self.img_ids = flow_match.image_ids(h, w)

    def tokenize(self, prompts) -> dict[str, np.ndarray]:
        n = len(prompts)
        return {"t5": np.zeros((n, self.max_sequence_length), np.int32),
                "clip": np.zeros((n, self.clip_length), np.int32)}


def flux_files(cfg) -> dict:
    """The FLUX config files: from the ``generator.path`` folder when there is one, else
    ``generator.architecture``."""
    if cfg.path and os.path.isdir(cfg.path):
        files = {key: json.loads(_read(cfg.path, name)) for key, name in FLUX_FILES.items()}
        if cfg.transformer_path:
            files["transformer"] = json.loads(_read(cfg.transformer_path, "config.json"))
        return files
    architecture = _as_dict(cfg.get("architecture") or {})
    if not architecture:
        raise ValueError(f"generator.path={cfg.path!r} is not a folder and generator.architecture is empty: "
                         "point generator.path at a FluxPipeline folder or give generator.architecture "
                         f"(its config files {sorted(FLUX_FILES)}, as experiments/finetune_flux_dev.py does)")
    missing = sorted(set(FLUX_FILES) - set(architecture))
    if missing:
        raise ValueError(f"generator.architecture lacks {missing}: it needs every one of {sorted(FLUX_FILES)}")
    return architecture


def _read(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {folder} is not a FluxPipeline folder")
    with open(path) as f:
        return f.read()


def generator_shapes(config, mesh, rules):
    g = config.generator
    if g.kind == "flux":
        return FluxShapes(flux_files(g), mesh=mesh, rules=rules, height=g.height, width=g.width,
                          guidance_scale=g.guidance_scale, max_sequence_length=g.max_sequence_length,
                          dtype=g.dtype or None, remat=g.remat)
    if not g.path:
        raise ValueError(f"generator.kind={g.kind!r} needs generator.path (its folder; only the config is read)")
    return genlib.load_generator(g, mesh, rules)   # a world generator reads its config, not its weights


def reward_shapes(config, mesh, rules, workdir: str) -> RewardModel:
    """The frozen RM with sharded ShapeDtypeStructs for parameters: from ``reward.path`` (its
    config.json, reward_config.json and tokenizer) or ``reward.architecture`` (with a word-level
    tokenizer written to ``workdir``: token ids differ, shapes do not)."""
    r = config.reward
    if r.path and os.path.isdir(r.path):
        folder = r.path
        settings = read_settings(folder, {})   # checked key by key, as RewardModel.from_pretrained does
    elif r.get("architecture"):
        architecture = _as_dict(r.architecture)
        if "config" not in architecture:
            raise ValueError("reward.architecture needs 'config' (the InternVL config.json fields) and "
                             "optionally 'reward_config' (the RM settings)")
        folder = rm_folder.write_model_folder(ml_collections.ConfigDict({"architecture": architecture["config"]}),
                                               image_size=0, folder=os.path.join(workdir, "rm"))  # size: the config's
        settings = dict(architecture.get("reward_config") or {})
        check_settings(settings, "reward.architecture.reward_config", "correct it in the config")
    else:
        raise ValueError(f"reward.path={r.path!r} is not a folder and reward.architecture is empty: point "
                         "reward.path at a reward model folder or give reward.architecture")
    if settings.get("paradigm") == "regressive":
        raise ValueError("the fine-tuning fit check covers generative RMs (pairwise or pointwise P(yes)); "
                         f"{r.path or 'reward.architecture'} is regressive")
    vlm_config = load_config(folder)
    graphdef, abstract = abstract_model(vlm_config, jnp.dtype(r.dtype))
    state = sharding.with_shardings(abstract, sharding.state_shardings(abstract, mesh, rules))
    vlm = InternVL(graphdef, state, vlm_config, mesh, folder)
    return RewardModel(vlm, settings, remat_policy=checkpoint_policy(r.remat_policy or None))


def batch_shapes(config, gen, rm: RewardModel, paradigm: str, mesh):
    """Sharded ShapeDtypeStructs of a global batch, with the structure the loop's examples have."""
    prompts = ["one red circle"]   # words every generator's tokenizer knows (the world's vocabulary is closed)
    rm_tokens = rm.tokens(prompts, gen.image_shape, pairwise=paradigm == "pairwise",
                          criteria=config.reward.criteria or None)
    references = np.zeros((1, config.bank.top_k, *gen.image_shape), np.uint8) if paradigm == "pairwise" else None
    anchor = [(prompts[0], np.zeros(gen.image_shape, np.uint8))] if config.anchor.weight > 0 else None
    example = FinetuneExamples(1, gen.tokenize(prompts), rm_tokens, references, anchor, gen.tokenize)[0]
    rows = config.data.global_batch_size
    local = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), np.asarray(x).dtype), (rows, *np.shape(x))),
                         example)
    return batch_spec(local, mesh)


def lower_step(config, devices) -> LoweredStep:
    """The fine-tuning step of ``config`` lowered for ``devices`` (e.g. a TPU topology's)."""
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    rules = config.mesh.rules
    ft.check_batch(config, mesh)
    gen = generator_shapes(config, mesh, rules)
    with tempfile.TemporaryDirectory() as tmp:
        rm = reward_shapes(config, mesh, rules, tmp)
        paradigm = ft.reward_paradigm(rm)
        settings = ft.step_settings(config, paradigm)
        graphdef, base = ft.sharded_shapes(gen.make_model, mesh, rules)
        frozen = dict(gen.frozen)
        if settings.lora_scale is None:
            trainable, params = base, {"generator (trains)": _count(base)}
        else:
            frozen["base"] = base
            init_lora, shardings = ft.lora_layout(config, base, sharding.shardings_of(base))
            trainable = sharding.with_shardings(jax.eval_shape(init_lora, base), shardings)
            params = {"generator (frozen base)": _count(base), "LoRA factors (train)": _count(trainable)}
        params.update({f"{name} (frozen)": _count(tree) for name, tree in gen.frozen.items()})
        params["reward model (frozen)"] = _count(rm.params)
        tx, schedule = make_optimizer(config.optim, config.train.steps)
        _, _, state_spec = ft.state_layout(config, tx, trainable, sharding.shardings_of(trainable), mesh)
        batch = batch_shapes(config, gen, rm, paradigm, mesh)
        lowered = ft.lower_step(gen, graphdef, rm, settings, tx, schedule, mesh, state_spec, batch, frozen,
                                rm.params)
    d, m = config.data, config.optim.grad_accum_steps
    h, w, _ = gen.image_shape
    what = (f"{config.algo}, {d.global_batch_size} prompts x {d.samples_per_prompt} samples at {h}x{w} in "
            f"{m} micro-batch{'es' if m > 1 else ''}, {config.sampler.num_steps} sampler steps, {paradigm} RM"
            + (", anchor" if config.anchor.weight > 0 else ""))
    return LoweredStep(lowered, ft.compiler_options(config.train.compiler_options), mesh, params, what)
