"""Wan 2.1 text-to-video and image-to-video sampling from a diffusers pipeline folder, as
``WanPipeline`` and ``WanImageToVideoPipeline`` (diffusers 0.42) compute it.

    pipe = WanSampler.from_pretrained("/ckpt/Wan2.1-T2V-1.3B-Diffusers")
    video = pipe(["a cat surfing"], num_frames=33, height=480, width=832)      # uint8 [B, F, H, W, 3]
    pipe = WanSampler.from_pretrained("/ckpt/Wan2.1-I2V-14B-480P-Diffusers")
    video = pipe(["the cat jumps"], image=first_frame, num_frames=33, height=480, width=832)

Prompts go through the folder's tokenizer (padded to ``max_sequence_length``) and UMT5, features
past each prompt's last token zeroed. Guidance is true classifier-free guidance in two transformer
passes, v = v_neg + s (v_pos - v_neg), whenever s > 1 (negative prompt '' by default). The
denoising loop is one ``lax.scan`` (rdance.diffusion.wan_schedule: the folder's FlowMatchEuler or
UniPC scheduler), jitted once per shape. Image-to-video conditions every step on the first frame:
the frame VAE-encoded with zero frames after it (normalised by latents_mean/std), behind a 4-channel
mask that marks the first latent frame as given, concatenated to the noisy latents on channels;
and the CLIP image encoder's penultimate hidden states go to every block's image cross-attention.
"""
from __future__ import annotations

import html
import re
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.diffusion import wan_schedule
from rdance.models.clip import load_clip_vision
from rdance.models.clip_image import ImagePreprocessor
from rdance.models.flux import config as cfglib
from rdance.models.flux.text import check_prompts
from rdance.models.wan import load_transformer, load_umt5, load_vae

T2V, I2V = "WanPipeline", "WanImageToVideoPipeline"


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt_clean: ftfy (when installed), HTML unescaped twice, whitespace collapsed."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def tokenize(tokenizer, prompts, max_sequence_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int32 [B, max_sequence_length] of the cleaned prompts, padded on
    the right and truncated as diffusers' WanPipeline tokenizes them."""
    prompts = [prompt_clean(p) for p in check_prompts(prompts)]
    tok = tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True)
    return np.asarray(tok.input_ids, np.int32), np.asarray(tok.attention_mask, np.int32)


def zero_padding(states: jax.Array, mask) -> jax.Array:
    """UMT5 states with every position past a prompt's tokens zeroed: diffusers keeps the first
    sum(mask) positions (the tokenizer pads on the right)."""
    keep = jnp.arange(states.shape[1])[None] < jnp.sum(jnp.asarray(mask), axis=1, keepdims=True)
    return states * keep[..., None].astype(states.dtype)


def _uint8_image(image) -> np.ndarray:
    """A PIL image, a path or a uint8 [H, W, 3] array -> uint8 RGB [H, W, 3]."""
    from PIL import Image
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB [H, W, 3] (or a PIL image), got {image.dtype} {image.shape}")
    return image


def _jitted(module, fn):
    """``fn(module, *args)`` jitted over the module's split state (compiled once per input shape)."""
    graphdef, state = nnx.split(module)
    call = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
    return lambda *args: call(state, *args)


def check_video(num_frames: int, height: int, width: int, frame_stride: int, unit: int):
    if num_frames < 1 or (num_frames - 1) % frame_stride:
        k = max(round((num_frames - 1) / frame_stride), 0)
        raise ValueError(f"num_frames {num_frames} must be {frame_stride}k+1 (the VAE's time stride); "
                         f"try {frame_stride * k + 1}")
    if height <= 0 or width <= 0 or height % unit or width % unit:
        raise ValueError(f"video size {height}x{width} must be positive multiples of {unit}; try "
                         f"{max(unit, round(height / unit) * unit)}x{max(unit, round(width / unit) * unit)}")


def check_task(path, image_to_video: bool, image_given: bool):
    if image_to_video and not image_given:
        raise ValueError(f"{path} is an image-to-video pipeline: give the first frame (image=..., "
                         "or --task=i2v --image=PATH)")
    if not image_to_video and image_given:
        raise ValueError(f"{path} is a text-to-video pipeline without an image_encoder: image-to-video needs a "
                         "WanImageToVideoPipeline folder (e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)")


def read_index(path: Path) -> dict:
    """The folder's model_index.json, refused unless it names a Wan pipeline."""
    index = cfglib.read_json(path, "model_index.json")
    if index.get("_class_name") not in (T2V, I2V):
        raise cfglib.CheckpointTypeError(f"{path} is a {index.get('_class_name')} folder, not a Wan pipeline "
                                         f"({T2V} or {I2V}, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    return index


def preflight(path, *, image_given: bool, num_frames: int, height: int, width: int):
    """The checks of :meth:`WanSampler.check` from the folder's JSON files alone, so a command
    fails in a second instead of after loading 14B parameters."""
    path = Path(path)
    read_index(path)
    transformer, vae = cfglib.read_json(path / "transformer"), cfglib.read_json(path / "vae")
    stride = 2 ** sum(map(bool, vae.get("temperal_downsample", (False, True, True))))
    spatial = 2 ** (len(vae.get("dim_mult", (1, 2, 4, 4))) - 1)
    check_video(num_frames, height, width, stride, spatial * tuple(transformer.get("patch_size", (1, 2, 2)))[1])
    i2v = transformer.get("image_dim") is not None or transformer.get("in_channels", 16) != vae.get("z_dim", 16)
    check_task(path, i2v, image_given)


@partial(jax.jit, static_argnums=(0, 1))
def _denoise(graphdef, kind, state, noise, steps, text, negative, image, condition, guidance):
    model = nnx.merge(graphdef, state)

    def velocity(x, t):
        inp = x if condition is None else jnp.concatenate([x, condition.astype(x.dtype)], axis=1)
        t = jnp.full((x.shape[0],), t)
        v = model(inp, t, text, image)
        if negative is None:
            return v
        v_neg = model(inp, t, negative, image)
        return v_neg + guidance * (v - v_neg)

    return wan_schedule.run(velocity, noise, wan_schedule.Schedule(kind, *steps))


class WanSampler:
    """A Wan pipeline folder's parts, loaded once; call it to sample videos (or latents)."""

    def __init__(self, path, transformer, text_encoder, tokenizer, vae, scheduler: dict,
                 image_encoder=None, image_processor=None):
        self.path, self.transformer, self.text_encoder = Path(path), transformer, text_encoder
        self.tokenizer = tokenizer
        self.vae, self.scheduler = vae, scheduler
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self._graphdef, self._state = nnx.split(transformer)
        self._umt5 = _jitted(text_encoder, lambda m, ids, mask: m(ids, mask))
        self._vae_encode = _jitted(vae, lambda m, video: m.encode(video)[0])     # the mean ("argmax")
        self._vae_decode = _jitted(vae, lambda m, z: m.decode_latents(z))
        self._clip = None if image_encoder is None else _jitted(image_encoder, lambda m, x: m.hidden_state(x, -2))

    @property
    def image_to_video(self) -> bool:
        return self.transformer.cfg.image_dim is not None or self.transformer.cfg.in_channels != self.vae.cfg.z_dim

    @classmethod
    def from_pretrained(cls, path, *, mesh=None, rules=sharding.DEFAULT_RULES, dtype: str | None = None,
                        attention: str = "auto") -> "WanSampler":
        """A WanPipeline or WanImageToVideoPipeline folder (model_index.json layout), every part's
        parameters placed on their shards of ``mesh`` (None: the first device); ``dtype`` is the
        transformer's compute dtype (parameters stay as stored)."""
        from transformers import AutoTokenizer
        path = Path(path)
        index = read_index(path)
        place = dict(mesh=mesh, rules=rules, attention=attention)
        transformer = load_transformer(path / "transformer", dtype=dtype, **place)
        scheduler = cfglib.read_json(path / "scheduler", "scheduler_config.json")
        wan_schedule.schedule(scheduler, 1)            # an unsupported scheduler fails before the big loads
        image_encoder = image_processor = None
        if transformer.cfg.image_dim is not None:
            if not (index.get("image_encoder") or [None])[0]:
                raise ValueError(f"{path}: the transformer takes CLIP image tokens but the folder has no "
                                 "image_encoder; use a complete WanImageToVideoPipeline folder")
            image_encoder = load_clip_vision(path / "image_encoder", **place)
            image_processor = ImagePreprocessor.from_pretrained(path / "image_processor")
        return cls(path, transformer, load_umt5(path / "text_encoder", **place),
                   AutoTokenizer.from_pretrained(path / "tokenizer"), load_vae(path / "vae", remat="none", **place),
                   scheduler, image_encoder, image_processor)

    # ----- conditioning

    def encode_prompt(self, prompts, max_sequence_length: int = 512) -> jax.Array:
        """[B, max_sequence_length, text_dim]: UMT5 features, zero past each prompt's tokens."""
        ids, mask = tokenize(self.tokenizer, prompts, max_sequence_length)
        return zero_padding(self._umt5(ids, mask), mask)

    def encode_image(self, image) -> jax.Array:
        """[1, tokens, image_dim]: the image encoder's hidden_states[-2] on the processed image."""
        pixels = self.image_processor([_uint8_image(image)])
        return self._clip(jnp.asarray(pixels))

    def image_condition(self, image, num_frames: int, height: int, width: int) -> jax.Array:
        """[1, 4 + z_dim, latent frames, h, w]: the first-latent-frame mask, then the normalised VAE
        latents of the image resized to (height, width) followed by num_frames - 1 zero frames."""
        from PIL import Image
        frame = Image.fromarray(_uint8_image(image)).resize((width, height), resample=Image.LANCZOS)
        frame = np.asarray(frame, np.float32) / 255.0 * 2.0 - 1.0
        video = np.zeros((1, 3, num_frames, height, width), np.float32)
        video[0, :, 0] = frame.transpose(2, 0, 1)
        z = self._vae_encode(jnp.asarray(video))
        cfg = self.vae.cfg
        mean = jnp.asarray(cfg.latents_mean, z.dtype).reshape(1, -1, 1, 1, 1)
        inv_std = 1.0 / jnp.asarray(cfg.latents_std, z.dtype).reshape(1, -1, 1, 1, 1)
        z = (z - mean) * inv_std
        mask = jnp.zeros((1, cfg.temporal_factor) + z.shape[2:], z.dtype).at[:, :, 0].set(1.0)
        return jnp.concatenate([mask, z], axis=1)

    # ----- sampling

    def check(self, num_frames: int, height: int, width: int, image_given: bool):
        """One-line errors for what diffusers would round or reject silently."""
        check_video(num_frames, height, width, self.vae.cfg.temporal_factor,
                    self.vae.cfg.spatial_factor * self.transformer.cfg.patch_size[1])
        check_task(self.path, self.image_to_video, image_given)

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        cfg = self.vae.cfg
        return (batch, cfg.z_dim, (num_frames - 1) // cfg.temporal_factor + 1, height // cfg.spatial_factor,
                width // cfg.spatial_factor)

    def __call__(self, prompts, *, negative_prompts=None, image=None, num_frames: int = 81, height: int = 480,
                 width: int = 832, num_steps: int = 50, guidance_scale: float = 5.0, seed: int = 0,
                 latents=None, max_sequence_length: int = 512, output_type: str = "np"):
        """Videos uint8 [B, F, H, W, 3] (output_type 'np') or the final latents [B, z, T, h, w]
        ('latent'); ``latents`` replaces the noise drawn from ``seed``."""
        prompts = check_prompts(prompts)
        self.check(num_frames, height, width, image is not None)
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        sched = wan_schedule.schedule(self.scheduler, num_steps)
        text = self.encode_prompt(prompts, max_sequence_length)
        negative = None
        if guidance_scale > 1.0:
            neg = [""] * len(prompts) if negative_prompts is None else check_prompts(negative_prompts)
            if len(neg) != len(prompts):
                raise ValueError(f"{len(neg)} negative prompts for {len(prompts)} prompts")
            negative = self.encode_prompt(neg, max_sequence_length)
        shape = self.latent_shape(len(prompts), num_frames, height, width)
        if latents is None:
            latents = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        elif tuple(np.shape(latents)) != shape:
            raise ValueError(f"latents of shape {tuple(np.shape(latents))}; this video needs {shape}")
        image_embeds = condition = None
        if image is not None:
            condition = jnp.repeat(self.image_condition(image, num_frames, height, width), len(prompts), axis=0)
            if self.image_encoder is not None:
                image_embeds = jnp.repeat(self.encode_image(image), len(prompts), axis=0)
        steps = (sched.timesteps, sched.sigmas, sched.corr, sched.pred)
        out = _denoise(self._graphdef, sched.kind, self._state, jnp.asarray(latents, jnp.float32), steps, text,
                       negative, image_embeds, condition, jnp.float32(guidance_scale))
        if output_type == "latent":
            return out
        return self.decode(out)

    def decode(self, latents) -> np.ndarray:
        """Normalised latents -> uint8 frames [B, F, H, W, 3] (diffusers' postprocess: round((x + 1) / 2 * 255))."""
        video = self._vae_decode(jnp.asarray(latents))
        frames = np.asarray(jnp.clip(video / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
        return frames.transpose(0, 2, 3, 4, 1)
