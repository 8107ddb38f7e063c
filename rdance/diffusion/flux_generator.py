"""FLUX from a diffusers FluxPipeline folder: the one FLUX wrapper, for sampling (``rdance.run.generate``)
and as a fine-tunable generator (the :class:`rdance.diffusion.generator.Generator` interface).

    gen = FluxGenerator.from_pretrained("/ckpt/FLUX.1-dev", mesh=mesh, rules=rules, height=1024, width=1024)
    images = gen(["a red cube"], height=1024, width=1024, seeds=[0])     # uint8 [B, H, W, 3]
    gen = FluxGenerator.abstract(configs, mesh=mesh, rules=rules, ...)   # shapes only: no weights read

In training the transformer trains (in full, or through LoRA factors the loop adds); the T5 and
CLIP text encoders and the VAE are frozen arrays passed to the steps. The VAE decode is
rematerialised (``vae_remat``, 'full' by default) so ReFL's reward gradient through a 1024px
decode fits. Latents are FLUX's packed 2x2 patches of the VAE's scaled latents.

Both constructors go through one ``__init__``: :meth:`from_pretrained` loads the frozen parts'
weights, :meth:`abstract` makes them sharded ShapeDtypeStructs (from the folder's config files or
a dict of them) and tokenizes prompts to zeros of the right length, for lowering the training
step from shapes alone (``rdance.train.finetune_setup.build(..., abstract=True)``).
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.diffusion import flow_match
from rdance.diffusion.generator import register_generator
from rdance.diffusion.sampler import flux_velocity, sample
from rdance.models import attention as attnlib
from rdance.models.flux import (PIPELINE_FILES, config as cfglib, export_transformer, load_clip, load_t5,
                                load_transformer, load_vae, pipeline_configs)
from rdance.models.flux.clip import CLIPTextConfig, CLIPTextModel
from rdance.models.flux.t5 import T5Config, T5Encoder
from rdance.models.flux.text import TextEncoders, check_prompts
from rdance.models.flux.transformer import FluxConfig, FluxTransformer
from rdance.models.flux.vae import AutoencoderKL, VAEConfig

CONFIG_FILE = "generator.json"

# The frozen parts: (config class, module class, pipeline component, loader).
FROZEN_PARTS = {"t5": (T5Config, T5Encoder, "text_encoder_2", load_t5),
                "clip": (CLIPTextConfig, CLIPTextModel, "text_encoder", load_clip),
                "vae": (VAEConfig, AutoencoderKL, "vae", load_vae)}


@partial(jax.jit, static_argnums=0)
def _sample(graphdef, state, noise, sigmas, cond, negative, guidance, true_cfg_scale):
    model = nnx.merge(graphdef, state)
    velocity = flux_velocity(model, cond, guidance=guidance, negative=negative, true_cfg_scale=true_cfg_scale)
    return sample(velocity, noise, sigmas)


@partial(jax.jit, static_argnums=(0, 3, 4))
def _decode(graphdef, state, tokens, h, w):
    return nnx.merge(graphdef, state).decode_latents(flow_match.unpack(tokens, h, w))


class FluxGenerator:
    kind = "flux"

    def __init__(self, configs: dict[str, dict], *, mesh, rules, height: int, width: int,
                 guidance_scale: float = 3.5, max_sequence_length: int = 512, dtype: str | None = None,
                 remat: str = "none", vae_remat: str = "full", attention: str = "auto", path=None,
                 transformer_path=None, abstract: bool = False):
        """``configs``: the pipeline's component configs (``PIPELINE_FILES``' keys). With ``path``
        (and not ``abstract``) the frozen parts are loaded from that folder; with ``abstract`` they
        are sharded ShapeDtypeStructs built from ``configs``. ``attention`` names the attention
        implementation of every part (rdance.models.attention)."""
        if not abstract and path is None:
            raise ValueError("FluxGenerator needs the pipeline folder (path) unless abstract=True")
        self.path = Path(path) if path else None
        self.transformer_path = Path(transformer_path) if transformer_path else \
            (self.path / "transformer" if self.path else None)
        self.mesh, self.rules, self.abstract = mesh, rules, abstract
        self.runtime = dict(dtype=dtype, remat=remat, attention=attention)
        self.cfg = cfglib.from_dict(FluxConfig, configs["transformer"], **self.runtime)
        self.schedule = flow_match.ScheduleConfig.from_dict(configs["scheduler"])
        self.guidance_scale, self.max_sequence_length = guidance_scale, max_sequence_length
        self._defs, self.frozen, modules, part_cfgs = {}, {}, {}, {}
        for name, (cfg_cls, model_cls, component, loader) in FROZEN_PARTS.items():
            runtime = dict(dtype=dtype, attention=attention, **({"remat": vae_remat} if name == "vae" else {}))
            if abstract:
                cfg = part_cfgs[name] = cfglib.from_dict(cfg_cls, configs[component], **runtime)
                self._defs[name], self.frozen[name] = sharding.sharded_shapes(
                    lambda: model_cls(cfg, rngs=nnx.Rngs(0)), mesh, rules)
            else:
                module = modules[name] = loader(self.path / component, mesh=mesh, rules=rules, **runtime)
                part_cfgs[name] = module.cfg
                self._defs[name], state = nnx.split(module, nnx.Param)
                self.frozen[name] = nnx.to_pure_dict(state)
        self.text = None if abstract else TextEncoders(modules["clip"], modules["t5"],
                                                       *_tokenizers(self.path))
        self._vae = None if abstract else nnx.split(modules["vae"])
        self.vae_cfg, self.clip_length = part_cfgs["vae"], part_cfgs["clip"].max_position_embeddings
        self.latent_hw = flow_match.latent_hw(height, width, self.vae_cfg.downsample_factor)
        h, w = self.latent_hw
        self.image_shape = (height, width, 3)
        self.latent_shape = ((h // 2) * (w // 2), self.cfg.in_channels)
        self.img_ids = flow_match.image_ids(h, w)
        self._transformer = None   # loaded on the first sampling call (training passes its own)

    # ----- construction
    @classmethod
    def from_pretrained(cls, path, *, mesh=None, rules=sharding.DEFAULT_RULES, height: int = 1024,
                        width: int = 1024, transformer_path=None, **settings) -> "FluxGenerator":
        """A FluxPipeline folder (model_index.json, transformer/, vae/, text encoders, tokenizers,
        scheduler/) with its frozen parts loaded; ``transformer_path``: a fine-tuned transformer."""
        configs = pipeline_configs(path, transformer_path)
        return cls(configs, mesh=mesh, rules=rules, height=height, width=width, path=path,
                   transformer_path=transformer_path, **settings)

    @classmethod
    def abstract(cls, configs, *, mesh, rules, height: int, width: int, **settings) -> "FluxGenerator":
        """Shapes only, nothing read but config files: ``configs`` is a FluxPipeline folder or a
        dict of its component configs (``PIPELINE_FILES``' keys)."""
        if isinstance(configs, (str, os.PathLike)):
            configs = pipeline_configs(configs, settings.pop("transformer_path", None))
        settings.pop("transformer_path", None)
        missing = sorted(set(PIPELINE_FILES) - set(configs))
        if missing:
            raise ValueError(f"the FLUX configs lack {missing}: give every one of {sorted(PIPELINE_FILES)}")
        return cls(dict(configs), mesh=mesh, rules=rules, height=height, width=width, abstract=True, **settings)

    # ----- the Generator interface
    def make_model(self) -> FluxTransformer:
        return FluxTransformer(self.cfg, rngs=nnx.Rngs(0))

    def initial_params(self, mesh, rules) -> dict:
        model = load_transformer(self.transformer_path, mesh=mesh, rules=rules, **self.runtime)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        prompts = check_prompts(prompts)
        if self.abstract:   # shapes only: zeros of the lengths the tokenizers pad to
            n = len(prompts)
            return {"t5": np.zeros((n, self.max_sequence_length), np.int32),
                    "clip": np.zeros((n, self.clip_length), np.int32)}
        return {"t5": self.text.tokenize_t5(prompts, self.max_sequence_length, "warn"),
                "clip": self.text.tokenize_clip(prompts)}

    def drop_captions(self, tokens: dict, key, ids) -> dict:
        """No caption dropout: FLUX.1-dev is guidance-distilled (one pass, no empty-caption branch)."""
        del key, ids
        return tokens

    def condition(self, model, frozen, tokens) -> dict:
        t5 = nnx.merge(self._defs["t5"], frozen["t5"])
        clip = nnx.merge(self._defs["clip"], frozen["clip"])
        _, pooled = clip(tokens["clip"])
        return dict(prompt_embeds=jax.lax.stop_gradient(t5(tokens["t5"])),
                    pooled=jax.lax.stop_gradient(pooled))

    def velocity(self, model: FluxTransformer, cond, guided: bool = True):
        # FLUX.1-dev's guidance is an input of the distilled model, the same in training and
        # sampling, so ``guided`` changes nothing here.
        del guided
        img_ids = jnp.asarray(self.img_ids)
        txt_ids = jnp.zeros((cond["prompt_embeds"].shape[1], 3), jnp.float32)

        def v(x, t):
            timestep = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
            guidance = jnp.full((x.shape[0],), self.guidance_scale, jnp.float32) if self.cfg.guidance_embeds else None
            return model(hidden_states=x, encoder_hidden_states=cond["prompt_embeds"],
                         pooled_projections=cond["pooled"], timestep=timestep, img_ids=img_ids,
                         txt_ids=txt_ids, guidance=guidance)
        return v

    def decode(self, frozen, latents) -> jax.Array:
        vae = nnx.merge(self._defs["vae"], frozen["vae"])
        images = vae.decode_latents(flow_match.unpack(latents, *self.latent_hw))   # NCHW in ~[-1, 1]
        return jnp.clip((jnp.transpose(images, (0, 2, 3, 1)).astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)

    def encode(self, frozen, images) -> jax.Array:
        vae = nnx.merge(self._defs["vae"], frozen["vae"])
        x = jnp.transpose(jnp.asarray(images, jnp.float32) / 127.5 - 1.0, (0, 3, 1, 2))
        return flow_match.pack(vae.encode_latents(x))

    def export(self, params, folder: str) -> str:
        """The fine-tuned transformer as a diffusers folder (``folder/transformer``), and a
        generator.json naming the base pipeline whose other components it pairs with."""
        model = nnx.merge(nnx.split(nnx.eval_shape(self.make_model), nnx.Param)[0], params)
        export_transformer(model, Path(folder) / "transformer")
        (Path(folder) / CONFIG_FILE).write_text(json.dumps({"kind": self.kind, "base": str(self.path)}, indent=2))
        return folder

    def prompts(self, data) -> tuple[list[str], list[str]]:
        raise ValueError("data.prompt_file is required for a FLUX generator (a text file, one prompt per line)")

    def caption_images(self, length: int, seed: int):
        """No built-in caption-image pairs: the anchor needs anchor.path."""
        return None

    def heldout_evaluator(self, sampler, heldout, samples_per_prompt: int):
        """No programmatic judge for FLUX's prompts: held-out prompts feed the sample grids only."""
        return None

    # ----- sampling with the pipeline's own transformer (rdance.run.generate)
    def _conditioning(self, prompts, img_ids, max_sequence_length, on_overflow):
        embeds, pooled = self.text.encode(prompts, max_sequence_length=max_sequence_length, on_overflow=on_overflow)
        return dict(prompt_embeds=embeds, pooled=pooled, img_ids=jnp.asarray(img_ids),
                    txt_ids=jnp.zeros((embeds.shape[1], 3), jnp.float32))

    def transformer(self) -> tuple[Any, Any]:
        """(graphdef, state) of the pipeline's transformer, loaded once."""
        if self._transformer is None:
            self._transformer = nnx.split(load_transformer(self.transformer_path, mesh=self.mesh, rules=self.rules,
                                                           **self.runtime))
        return self._transformer

    def noise(self, seeds, height: int, width: int) -> jax.Array:
        """Packed Gaussian noise, one independent draw per seed."""
        h, w = flow_match.latent_hw(height, width, self.vae_cfg.downsample_factor)
        shape = ((h // 2) * (w // 2), self.cfg.in_channels)
        return jnp.stack([jax.random.normal(jax.random.key(int(s)), shape) for s in seeds])

    def sample_latents(self, prompts, *, height: int, width: int, num_steps: int = 28,
                       guidance_scale: float = 3.5, noise=None, seeds=None, negative_prompts=None,
                       true_cfg_scale: float = 1.0, max_sequence_length: int = 512,
                       on_overflow: str = "warn") -> jax.Array:
        """Packed latents [B, tokens, C*4] after ``num_steps`` Euler steps (diffusers'
        ``FluxPipeline(..., output_type='latent')``). Inputs are checked before any model runs."""
        prompts = check_prompts(prompts)
        h, w = flow_match.latent_hw(height, width, self.vae_cfg.downsample_factor)
        if noise is None:
            noise = self.noise(seeds if seeds is not None else range(len(prompts)), height, width)
        expected = (len(prompts), (h // 2) * (w // 2), self.cfg.in_channels)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise shape {tuple(noise.shape)} != {expected} for {len(prompts)} prompts "
                             f"at {height}x{width}")
        img_ids = flow_match.image_ids(h, w)
        cond = self._conditioning(prompts, img_ids, max_sequence_length, on_overflow)
        negative = None
        if true_cfg_scale > 1.0:
            if negative_prompts is None:
                raise ValueError("true_cfg_scale > 1 needs negative_prompts (use '' for an empty one)")
            negative_prompts = check_prompts(negative_prompts)
            if len(negative_prompts) == 1:
                negative_prompts = negative_prompts * len(prompts)
            negative = self._conditioning(negative_prompts, img_ids, max_sequence_length, on_overflow)
        guidance = None
        if self.cfg.guidance_embeds:
            guidance = jnp.full((len(prompts),), guidance_scale, jnp.float32)
        sigmas = flow_match.sigmas(num_steps, expected[1], self.schedule)
        graphdef, state = self.transformer()
        return _sample(graphdef, state, jnp.asarray(noise), sigmas, cond, negative, guidance,
                       jnp.float32(true_cfg_scale))

    def decode_latents(self, latents: jax.Array, height: int, width: int) -> jax.Array:
        """Packed latents -> images NCHW in [-1, 1] (clipped), at any size."""
        h, w = flow_match.latent_hw(height, width, self.vae_cfg.downsample_factor)
        graphdef, state = self._vae
        return jnp.clip(_decode(graphdef, state, latents, h, w), -1.0, 1.0)

    def __call__(self, prompts, *, height: int, width: int, **kwargs) -> np.ndarray:
        """Prompts -> uint8 images [B, H, W, 3]."""
        latents = self.sample_latents(prompts, height=height, width=width, **kwargs)
        images = self.decode_latents(latents, height, width)
        return np.asarray(jnp.round((images.transpose(0, 2, 3, 1) + 1) * 127.5)).astype(np.uint8)


def _tokenizers(path: Path):
    from transformers import AutoTokenizer  # host-side tokenisation only; no torch models
    return AutoTokenizer.from_pretrained(path / "tokenizer"), AutoTokenizer.from_pretrained(path / "tokenizer_2")


def open_flux(cfg, mesh, rules, abstract: bool = False) -> FluxGenerator:
    """A config's ``generator`` section (kind 'flux'): ``path`` a FluxPipeline folder; abstract,
    the folder's config files when it is one, else ``architecture`` (a dict of them)."""
    settings = dict(mesh=mesh, rules=rules, height=cfg.height, width=cfg.width, guidance_scale=cfg.guidance_scale,
                    max_sequence_length=cfg.max_sequence_length, dtype=cfg.dtype or None, remat=cfg.remat,
                    attention=attnlib.from_config(cfg), transformer_path=cfg.transformer_path or None)
    if not abstract:
        return FluxGenerator.from_pretrained(cfg.path, **settings)
    if cfg.path and os.path.isdir(cfg.path):
        return FluxGenerator.abstract(cfg.path, **settings)
    architecture = cfg.get("architecture") or {}
    architecture = architecture.to_dict() if hasattr(architecture, "to_dict") else dict(architecture)
    if not architecture:
        raise ValueError(f"generator.path={cfg.path!r} is not a folder and generator.architecture is empty: "
                         "point generator.path at a FluxPipeline folder or give generator.architecture "
                         f"(its config files {sorted(PIPELINE_FILES)}, as experiments/finetune_flux_dev.py does)")
    missing = sorted(set(PIPELINE_FILES) - set(architecture))
    if missing:
        raise ValueError(f"generator.architecture lacks {missing}: it needs every one of {sorted(PIPELINE_FILES)}")
    if cfg.transformer_path:
        architecture["transformer"] = cfglib.read_json(cfg.transformer_path)
    return FluxGenerator.abstract(architecture, **settings)


register_generator("flux", open_flux)
