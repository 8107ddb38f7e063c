"""FLUX from a diffusers FluxPipeline folder as a fine-tunable generator.

The transformer trains (in full, or through LoRA factors the loop adds); the T5 and CLIP text
encoders and the VAE are frozen arrays passed to the steps. The VAE decode is rematerialised
(``vae_remat``, 'full' by default) so ReFL's reward gradient through a 1024px decode fits.
Latents are FLUX's packed 2x2 patches of the VAE's scaled latents.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.diffusion import flow_match
from rdance.models.flux import config as cfglib, export_transformer, load_text_encoders, load_transformer, load_vae
from rdance.models.flux.text import check_prompts
from rdance.models.flux.transformer import FluxConfig, FluxTransformer

CONFIG_FILE = "generator.json"


class FluxGenerator:
    kind = "flux"

    def __init__(self, path, *, mesh, rules, height: int, width: int, guidance_scale: float = 3.5,
                 max_sequence_length: int = 512, dtype: str | None = None, remat: str = "none",
                 vae_remat: str = "full", transformer_path: str | None = None):
        path = Path(path)
        index = cfglib.read_json(path, "model_index.json")
        if index.get("_class_name") != "FluxPipeline":
            raise cfglib.CheckpointTypeError(f"{path} is a {index.get('_class_name')} folder, not a FluxPipeline")
        self.path, self.mesh, self.rules = path, mesh, rules
        self.transformer_path = Path(transformer_path) if transformer_path else path / "transformer"
        self.runtime = dict(dtype=dtype, remat=remat)
        self.cfg = cfglib.from_dict(FluxConfig, cfglib.read_json(self.transformer_path), **self.runtime)
        self.schedule = flow_match.ScheduleConfig.from_dict(cfglib.read_json(path / "scheduler", "scheduler_config.json"))
        self.guidance_scale, self.max_sequence_length = guidance_scale, max_sequence_length
        vae = load_vae(path / "vae", mesh=mesh, rules=rules, dtype=dtype, remat=vae_remat)
        self.text = load_text_encoders(path, mesh=mesh, rules=rules, dtype=dtype)
        self._defs = {}
        self.frozen = {}
        for name, module in (("t5", self.text.t5), ("clip", self.text.clip), ("vae", vae)):
            self._defs[name], state = nnx.split(module, nnx.Param)
            self.frozen[name] = nnx.to_pure_dict(state)
        self.vae_cfg = vae.cfg
        self.latent_hw = flow_match.latent_hw(height, width, vae.cfg.downsample_factor)
        h, w = self.latent_hw
        self.image_shape = (height, width, 3)
        self.latent_shape = ((h // 2) * (w // 2), self.cfg.in_channels)
        self.img_ids = flow_match.image_ids(h, w)

    def make_model(self) -> FluxTransformer:
        return FluxTransformer(self.cfg, rngs=nnx.Rngs(0))

    def initial_params(self, mesh, rules) -> dict:
        model = load_transformer(self.transformer_path, mesh=mesh, rules=rules, **self.runtime)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        prompts = check_prompts(prompts)
        return {"t5": self.text.tokenize_t5(prompts, self.max_sequence_length, "warn"),
                "clip": self.text.tokenize_clip(prompts)}

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
