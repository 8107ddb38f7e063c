"""A whole FLUX pipeline folder (model_index.json layout) as one object: text in, latents or
images out, with sampling compiled as a single scan."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.diffusion import flow_match
from rdance.diffusion.sampler import flux_velocity, sample
from rdance.models.flux.text import TextEncoders, check_prompts
from rdance.models.flux.transformer import FluxTransformer
from rdance.models.flux.vae import AutoencoderKL


@partial(jax.jit, static_argnums=0)
def _sample(graphdef, state, noise, sigmas, cond, negative, guidance, true_cfg_scale):
    model = nnx.merge(graphdef, state)
    velocity = flux_velocity(model, cond, guidance=guidance, negative=negative, true_cfg_scale=true_cfg_scale)
    return sample(velocity, noise, sigmas)


@partial(jax.jit, static_argnums=(0, 3, 4))
def _decode(graphdef, state, tokens, h, w):
    return nnx.merge(graphdef, state).decode_latents(flow_match.unpack(tokens, h, w))


@dataclasses.dataclass
class FluxPipeline:
    transformer: FluxTransformer
    vae: AutoencoderKL
    text: TextEncoders
    schedule: flow_match.ScheduleConfig

    def __post_init__(self):
        self._transformer = nnx.split(self.transformer)
        self._vae = nnx.split(self.vae)

    @property
    def vae_factor(self) -> int:
        return self.vae.cfg.downsample_factor

    def _conditioning(self, prompts, img_ids, max_sequence_length, on_overflow):
        embeds, pooled = self.text.encode(prompts, max_sequence_length=max_sequence_length, on_overflow=on_overflow)
        return dict(prompt_embeds=embeds, pooled=pooled, img_ids=jnp.asarray(img_ids),
                    txt_ids=jnp.zeros((embeds.shape[1], 3), jnp.float32))

    def noise(self, seeds, height: int, width: int) -> jax.Array:
        """Packed Gaussian noise, one independent draw per seed."""
        h, w = flow_match.latent_hw(height, width, self.vae_factor)
        shape = ((h // 2) * (w // 2), self.transformer.cfg.in_channels)
        return jnp.stack([jax.random.normal(jax.random.key(int(s)), shape) for s in seeds])

    def sample_latents(self, prompts, *, height: int, width: int, num_steps: int = 28,
                       guidance_scale: float = 3.5, noise=None, seeds=None, negative_prompts=None,
                       true_cfg_scale: float = 1.0, max_sequence_length: int = 512,
                       on_overflow: str = "warn") -> jax.Array:
        """Packed latents [B, tokens, C*4] after ``num_steps`` Euler steps (diffusers'
        ``FluxPipeline(..., output_type='latent')``). Inputs are checked before any model runs."""
        prompts = check_prompts(prompts)
        h, w = flow_match.latent_hw(height, width, self.vae_factor)
        if noise is None:
            noise = self.noise(seeds if seeds is not None else range(len(prompts)), height, width)
        expected = (len(prompts), (h // 2) * (w // 2), self.transformer.cfg.in_channels)
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
        if self.transformer.cfg.guidance_embeds:
            guidance = jnp.full((len(prompts),), guidance_scale, jnp.float32)
        sigmas = flow_match.sigmas(num_steps, expected[1], self.schedule)
        graphdef, state = self._transformer
        return _sample(graphdef, state, jnp.asarray(noise), sigmas, cond, negative, guidance,
                       jnp.float32(true_cfg_scale))

    def decode(self, latents: jax.Array, height: int, width: int) -> jax.Array:
        """Packed latents -> images NCHW in [-1, 1] (clipped)."""
        h, w = flow_match.latent_hw(height, width, self.vae_factor)
        graphdef, state = self._vae
        return jnp.clip(_decode(graphdef, state, latents, h, w), -1.0, 1.0)

    def __call__(self, prompts, *, height: int, width: int, **kwargs) -> np.ndarray:
        """Prompts -> uint8 images [B, H, W, 3]."""
        images = self.decode(self.sample_latents(prompts, height=height, width=width, **kwargs), height, width)
        return np.asarray(jnp.round((images.transpose(0, 2, 3, 1) + 1) * 127.5)).astype(np.uint8)
