"""Wan 2.1 text-to-video from a diffusers WanPipeline folder as a fine-tunable generator (the
:class:`rdance.diffusion.generator.Generator` interface, kind 'wan').

    gen = WanGenerator.from_pretrained("/ckpt/Wan2.1-T2V-1.3B-Diffusers", mesh=mesh, rules=rules,
                                       num_frames=81, height=480, width=832)
    gen = WanGenerator.abstract(configs, mesh=mesh, rules=rules, ...)   # shapes only: no weights read

A sample is a clip: ``image_shape`` is [F, H, W, 3] (rdance.diffusion.samples). The transformer
trains (in full, or through LoRA factors the loop adds); UMT5 and the causal 3D VAE are frozen
arrays passed to the steps. Latents are the VAE's normalised latents, NCTHW [z_dim, 1 + (F-1)/4,
H/8, W/8] per sample, what the transformer takes; the noise level t in [0, 1] reaches it as
timestep 1000 t. The schedule is the folder's flow shift (UniPC's ``flow_shift`` or Euler's
``shift``) on the loops' Euler sampler. Guidance is Wan's classifier-free guidance in two passes,
v = v_neg + s (v_pos - v_neg) for s = ``guidance_scale`` > 1, with ``negative_prompt`` ('' as
diffusers' WanPipeline defaults to); the flow-matching losses fit the unguided velocity.

``decode`` runs the whole clip through the VAE decoder: the decoder is causal in time, frame t
depends on every latent frame up to its own through the feature cache, so the frames a reward
model sees cannot be decoded alone (only frames after the last one seen could be skipped, and
'uniform' sampling sees the last frame); the port already decodes one latent frame at a time in a
``lax.scan`` (memory of one chunk), each block rematerialised (``vae_remat``, 'full' by default)
so ReFL's gradient through the decode fits.

A subclass changes what the loop asks of a generator beyond the model (its prompts, caption
clips, held-out evaluator) by overriding those methods and registering its own kind with
``register_generator(kind, SubClass.open)``; see docs/wan.md.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.diffusion import flow_match, unipc, wan_schedule
from rdance.diffusion.generator import register_generator
from rdance.diffusion.wan_pipeline import T2V, check_video, read_index, tokenize, zero_padding
from rdance.models import attention as attnlib
from rdance.models.flux import config as cfglib
from rdance.models.flux.text import check_prompts
from rdance.models.wan import export_transformer, load_transformer, load_umt5, load_vae
from rdance.models.wan.transformer import WanConfig, WanTransformer
from rdance.models.wan.umt5 import UMT5Config, UMT5Encoder
from rdance.models.wan.vae import AutoencoderKLWan, WanVAEConfig, clips_to_video, video_to_clips

# The component configs an abstract generator is built from: pipeline component -> file in it.
PIPELINE_FILES = {"transformer": "config.json", "vae": "config.json", "text_encoder": "config.json",
                  "scheduler": "scheduler_config.json"}
# The frozen parts: name -> (config class, module class, pipeline component, loader).
FROZEN_PARTS = {"umt5": (UMT5Config, UMT5Encoder, "text_encoder", load_umt5),
                "vae": (WanVAEConfig, AutoencoderKLWan, "vae", load_vae)}
TIMESTEPS = 1000    # Wan's timestep scale: t in [0, 1] is timestep 1000 t


def pipeline_configs(path, transformer_path=None) -> dict[str, dict]:
    """A WanPipeline folder's component configs (``PIPELINE_FILES``' keys)."""
    path = Path(path)
    read_index(path)
    configs = {name: cfglib.read_json(path / name, file) for name, file in PIPELINE_FILES.items()}
    if transformer_path:
        configs["transformer"] = cfglib.read_json(transformer_path)
    return configs


def flow_schedule(scheduler: dict) -> flow_match.ScheduleConfig:
    """The folder's scheduler as the loops' Euler schedule: its static flow shift."""
    wan_schedule.schedule(scheduler, 1)   # an unsupported scheduler fails here, with its fix
    key = "flow_shift" if scheduler.get("_class_name") == unipc.CLASS_NAME else "shift"
    return flow_match.ScheduleConfig(shift=float(scheduler.get(key, 1.0)), use_dynamic_shifting=False)


class WanGenerator:
    kind = "wan"

    def __init__(self, configs: dict[str, dict], *, mesh, rules, num_frames: int, height: int, width: int,
                 guidance_scale: float = 5.0, negative_prompt: str = "", max_sequence_length: int = 512,
                 dtype: str | None = None, remat: str = "none", vae_remat: str = "full", attention: str = "auto",
                 path=None, transformer_path=None, abstract: bool = False):
        """``configs``: the pipeline's component configs (``PIPELINE_FILES``' keys). With ``path``
        (and not ``abstract``) the frozen parts are loaded from that folder; with ``abstract`` they
        are sharded ShapeDtypeStructs built from ``configs``."""
        if not abstract and path is None:
            raise ValueError("WanGenerator needs the pipeline folder (path) unless abstract=True")
        self.path = Path(path) if path else None
        self.transformer_path = Path(transformer_path) if transformer_path else \
            (self.path / "transformer" if self.path else None)
        self.mesh, self.rules, self.abstract = mesh, rules, abstract
        self.runtime = dict(dtype=dtype, remat=remat, attention=attention)
        self.cfg = cfglib.from_dict(WanConfig, configs["transformer"], **self.runtime)
        if self.cfg.image_dim is not None or self.cfg.added_kv_proj_dim is not None:
            raise ValueError("this Wan transformer is image-to-video; fine-tuning takes a text-to-video "
                             f"{T2V} folder (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
        self.schedule = flow_schedule(configs["scheduler"])
        self.guidance_scale, self.negative_prompt = float(guidance_scale), negative_prompt
        self.max_sequence_length = max_sequence_length
        self._defs, self.frozen, part_cfgs = {}, {}, {}
        for name, (cfg_cls, model_cls, component, loader) in FROZEN_PARTS.items():
            runtime = dict(dtype=dtype, attention=attention, **({"remat": vae_remat} if name == "vae" else {}))
            if abstract:
                cfg = part_cfgs[name] = cfglib.from_dict(cfg_cls, configs[component], **runtime)
                self._defs[name], self.frozen[name] = sharding.sharded_shapes(
                    lambda: model_cls(cfg, rngs=nnx.Rngs(0)), mesh, rules)   # noqa: B023 (called at once)
            else:
                module = loader(self.path / component, mesh=mesh, rules=rules, **runtime)
                part_cfgs[name] = module.cfg
                self._defs[name], state = nnx.split(module, nnx.Param)
                self.frozen[name] = nnx.to_pure_dict(state)
        self.vae_cfg = vae = part_cfgs["vae"]
        if vae.z_dim != self.cfg.in_channels:
            raise ValueError(f"the transformer takes {self.cfg.in_channels} channels but the VAE's latents "
                             f"have {vae.z_dim}: the folder's parts do not belong together")
        check_video(num_frames, height, width, vae.temporal_factor, vae.spatial_factor * self.cfg.patch_size[1])
        self.image_shape = (num_frames, height, width, 3)
        self.latent_shape = (vae.z_dim, (num_frames - 1) // vae.temporal_factor + 1,
                             height // vae.spatial_factor, width // vae.spatial_factor)
        self.tokenizer = None if abstract else _tokenizer(self.path)
        self.negative_tokens = self.tokenize([negative_prompt]) if self.guidance_scale > 1.0 else None

    # ----- construction
    @classmethod
    def from_pretrained(cls, path, *, mesh=None, rules=sharding.DEFAULT_RULES, num_frames: int = 81,
                        height: int = 480, width: int = 832, transformer_path=None, **settings) -> "WanGenerator":
        """A WanPipeline folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/,
        scheduler/) with its frozen parts loaded; ``transformer_path``: a fine-tuned transformer."""
        return cls(pipeline_configs(path, transformer_path), mesh=mesh, rules=rules, num_frames=num_frames,
                   height=height, width=width, path=path, transformer_path=transformer_path, **settings)

    @classmethod
    def abstract(cls, configs, *, mesh, rules, num_frames: int, height: int, width: int,
                 **settings) -> "WanGenerator":
        """Shapes only, nothing read but config files: ``configs`` is a WanPipeline folder or a
        dict of its component configs (``PIPELINE_FILES``' keys)."""
        transformer_path = settings.pop("transformer_path", None)
        if isinstance(configs, (str, os.PathLike)):
            configs = pipeline_configs(configs, transformer_path)
        missing = sorted(set(PIPELINE_FILES) - set(configs))
        if missing:
            raise ValueError(f"the Wan configs lack {missing}: give every one of {sorted(PIPELINE_FILES)}")
        return cls(dict(configs), mesh=mesh, rules=rules, num_frames=num_frames, height=height, width=width,
                   abstract=True, **settings)

    @classmethod
    def open(cls, cfg, mesh, rules, abstract: bool = False) -> "WanGenerator":
        """A config's ``generator`` section: ``path`` a WanPipeline folder; abstract, the folder's
        config files when it is one, else ``architecture`` (a dict of them, as
        experiments/finetune_wan.py gives). The opener ``register_generator`` takes."""
        settings = dict(mesh=mesh, rules=rules, num_frames=cfg.get("num_frames", 81), height=cfg.height,
                        width=cfg.width, guidance_scale=cfg.guidance_scale,
                        negative_prompt=cfg.get("negative_prompt", ""),
                        max_sequence_length=cfg.max_sequence_length, dtype=cfg.dtype or None, remat=cfg.remat,
                        vae_remat=cfg.get("vae_remat", "full"), attention=attnlib.from_config(cfg),
                        transformer_path=cfg.transformer_path or None)
        if not abstract:
            return cls.from_pretrained(cfg.path, **settings)
        if cfg.path and os.path.isdir(cfg.path):
            return cls.abstract(cfg.path, **settings)
        architecture = cfg.get("architecture") or {}
        architecture = architecture.to_dict() if hasattr(architecture, "to_dict") else dict(architecture)
        if not architecture:
            raise ValueError(f"generator.path={cfg.path!r} is not a folder and generator.architecture is empty: "
                             "point generator.path at a WanPipeline folder or give generator.architecture "
                             f"(its config files {sorted(PIPELINE_FILES)}, as experiments/finetune_wan.py does)")
        if cfg.transformer_path:
            architecture["transformer"] = cfglib.read_json(cfg.transformer_path)
        settings.pop("transformer_path")
        return cls.abstract(architecture, **settings)

    # ----- the Generator interface
    def make_model(self) -> WanTransformer:
        return WanTransformer(self.cfg, rngs=nnx.Rngs(0))

    def initial_params(self, mesh, rules) -> dict:
        model = load_transformer(self.transformer_path, mesh=mesh, rules=rules, **self.runtime)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """{"ids", "mask"}: int32 [B, max_sequence_length] (abstract: zeros of that shape)."""
        if self.abstract:
            zeros = np.zeros((len(check_prompts(prompts)), self.max_sequence_length), np.int32)
            return {"ids": zeros, "mask": zeros}
        ids, mask = tokenize(self.tokenizer, prompts, self.max_sequence_length)
        return {"ids": ids, "mask": mask}

    def _text(self, frozen, tokens) -> jax.Array:
        umt5 = nnx.merge(self._defs["umt5"], frozen["umt5"])
        return jax.lax.stop_gradient(zero_padding(umt5(tokens["ids"], tokens["mask"]), tokens["mask"]))

    def drop_captions(self, tokens: dict, key, ids) -> dict:
        """No caption dropout: rdance does not pretrain Wan and has no rate of its pretraining to repeat."""
        del key, ids
        return tokens

    def condition(self, model, frozen, tokens) -> dict:
        """UMT5 states of the prompts and, when guiding, of the negative prompt (one row, shared)."""
        cond = {"text": self._text(frozen, tokens)}
        if self.negative_tokens is not None:
            cond["negative"] = self._text(frozen, {k: jnp.asarray(v) for k, v in self.negative_tokens.items()})
        return cond

    def velocity(self, model: WanTransformer, cond, guided: bool = True):
        def v(x, t):
            timestep = jnp.broadcast_to(jnp.asarray(t, jnp.float32) * TIMESTEPS, (x.shape[0],))
            v_pos = model(x, timestep, cond["text"])
            if not guided or "negative" not in cond:
                return v_pos
            negative = jnp.broadcast_to(cond["negative"], cond["text"].shape)
            v_neg = model(x, timestep, negative)
            return v_neg + self.guidance_scale * (v_pos - v_neg)
        return v

    def decode(self, frozen, latents) -> jax.Array:
        """Latents [B, z, T, h, w] -> clips [B, F, H, W, 3] in [0, 1] (clipped, as FLUX's decode),
        differentiable (the whole clip:
        the decoder is causal in time)."""
        vae = nnx.merge(self._defs["vae"], frozen["vae"])
        return video_to_clips(vae.decode_latents(latents))

    def encode(self, frozen, images) -> jax.Array:
        """uint8 clips [B, F, H, W, 3] -> latents [B, z, T, h, w] (the posterior mean)."""
        vae = nnx.merge(self._defs["vae"], frozen["vae"])
        return vae.encode_latents(clips_to_video(images))

    def export(self, params, folder: str) -> str:
        """A complete WanPipeline folder: the transformer with ``params``, every other component
        (and model_index.json) from the base folder, so WanSampler.from_pretrained and diffusers'
        WanPipeline.from_pretrained load it as they load the base."""
        if self.path is None:
            raise ValueError("an abstract WanGenerator has no base folder to export from")
        folder = Path(folder)
        model = nnx.merge(nnx.split(nnx.eval_shape(self.make_model), nnx.Param)[0], params)
        index = read_index(self.path)
        folder.mkdir(parents=True, exist_ok=True)
        for component, value in index.items():
            if component == "transformer" or component.startswith("_") or not isinstance(value, list):
                continue
            if (self.path / component).is_dir():
                shutil.copytree(self.path / component, folder / component, dirs_exist_ok=True,
                                copy_function=_link_or_copy)
        export_transformer(model, folder / "transformer")
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return str(folder)

    def prompts(self, data) -> tuple[list[str], list[str]]:
        raise ValueError("data.prompt_file is required for a Wan generator (a text file, one prompt per line)")

    def caption_images(self, length: int, seed: int):
        """No built-in caption clips: a Wan generator fine-tunes without the anchor (anchor.weight=0)."""
        return None

    def heldout_evaluator(self, sampler, heldout, samples_per_prompt: int):
        """No programmatic judge for free-text prompts: held-out prompts feed the sample grids only."""
        return None


def _tokenizer(path: Path):
    from transformers import AutoTokenizer  # host-side tokenisation only; no torch models
    return AutoTokenizer.from_pretrained(path / "tokenizer")


def _link_or_copy(src, dst):
    """A hard link where the file system allows one (the 11 GB text encoder is not copied), else a
    copy. A file already there from an earlier export (a resumed run exports into the same
    folder) is kept if it is the base's file, else replaced."""
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            return dst
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


open_wan = WanGenerator.open
register_generator("wan", open_wan)
