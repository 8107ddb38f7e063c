"""The moving world's video generator: a miniature Wan 2.1. The Wan transformer
(rdance.models.wan.transformer at tiny width), conditioned by a tiny UMT5 over the world's word
tokenizer, generates the latents of a tiny causal 3D VAE of Wan's architecture
(rdance.models.wan.vae), trained first on rendered motion clips (rdance.world.video_autoencoder)
and then frozen.

Latents are the VAE's normalised latents, (z - latents_mean) / latents_std per channel, NCTHW;
the generator interface (rdance.diffusion.generator) sees them as tokens [B, T*h*w, z_dim],
frame-major, so the flow-matching loss and the samplers treat them as any packed latents.
Text features past each prompt's last token are zero, as diffusers' WanPipeline makes them, and
the empty caption (caption dropout, guidance's negative prompt '') is all zeros.

This class is what pretraining trains (text encoder and transformer, rdance.run.pretrain_generator
with ``kind='world_video'``); fine-tuning opens its folder as generator kind 'world_video'
(rdance.world.world_wan: a WanGenerator, the transformer trains). Both take the moving world's
prompts, anchor clips and motion judge from :class:`MovingWorld`.

A generator folder (``export``) is a diffusers ``WanPipeline`` folder: model_index.json,
tokenizer/, text_encoder/ (transformers UMT5EncoderModel), transformer/
(WanTransformer3DModel), vae/ (AutoencoderKLWan), scheduler/ (FlowMatchEuler with the
generator's shift); and ``world_video.json`` (its sizes, clip shape, prompt length and
guidance), which diffusers ignores. rdance.diffusion.wan_pipeline.WanSampler and diffusers'
WanPipeline sample it with ``max_sequence_length=max_tokens``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.diffusion import flow_match, generator as genlib
from rdance.models.flux import config as cfglib
from rdance.models.wan import export_transformer, export_umt5, export_vae, load_transformer, load_umt5, load_vae
from rdance.models.wan.transformer import WanConfig, WanTransformer
from rdance.models.wan.umt5 import UMT5Config, UMT5Encoder
from rdance.models.wan.vae import AutoencoderKLWan, WanVAEConfig, clips_to_video, video_to_clips
from rdance.world.evaluate import MotionJudgeEval
from rdance.world.generator import (_load_tokenizer, config_of_sizes, folder_params, prompt_words,
                                    read_folder_config, word_tokens)
from rdance.world.motion import MOTION_KINDS, MOTIONS, MotionScene, RenderedClips, motion_prompt_split

CONFIG_FILE = "world_video.json"
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
             "use_dynamic_shifting": False}


@dataclasses.dataclass(frozen=True)
class WorldVideoConfig:
    image_size: int = 32
    frames: int = 5                # 1 + 4k: the VAE encodes a first frame, then chunks of 4
    # The VAE (AutoencoderKLWan): base width, width multipliers (spatial downsampling
    # 2^(len-1)), which levels also halve time, latent channels, resnet blocks per level.
    vae_base_dim: int = 8
    vae_dim_mult: tuple[int, ...] = (1, 2)
    vae_temporal_downsample: tuple[bool, ...] = (True,)
    vae_z_dim: int = 4
    vae_res_blocks: int = 1
    vae_latents_mean: tuple[float, ...] = ()    # () = zeros / ones until measured after VAE training
    vae_latents_std: tuple[float, ...] = ()
    max_tokens: int = 12
    vocab_size: int = 0            # set from the tokenizer
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    heads: int = 4
    head_dim: int = 32
    layers: int = 4
    ffn_dim: int = 256
    freq_dim: int = 64
    patch_size: tuple[int, int, int] = (1, 2, 2)
    shift: float = 1.0
    caption_dropout: float = 0.0   # pretraining: share of captions replaced by the empty one (for guidance)
    guidance_scale: float = 1.0
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        if self.frames < 5 or (self.frames - 1) % 4:
            raise ValueError(f"frames={self.frames}: the Wan VAE encodes 1 + 4k frames (k >= 1); try "
                             f"{max(5, 1 + 4 * round((self.frames - 1) / 4))}")
        if len(self.vae_temporal_downsample) != len(self.vae_dim_mult) - 1:
            raise ValueError(f"vae_temporal_downsample {tuple(self.vae_temporal_downsample)} needs one entry per "
                             f"downsampling level ({len(self.vae_dim_mult) - 1} for vae_dim_mult "
                             f"{tuple(self.vae_dim_mult)})")
        if not any(self.vae_temporal_downsample):
            raise ValueError("vae_temporal_downsample has no True: diffusers' WanPipeline rounds the frame count "
                             "for a VAE without temporal downsampling; halve time at one level at least")
        unit = self.spatial_factor * self.patch_size[1]
        if self.image_size % unit or self.patch_size[1] != self.patch_size[2]:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {unit} (the VAE's downsampling "
                             f"x the patch size {tuple(self.patch_size)}, square patches)")
        if self.latent_frames % self.patch_size[0]:
            raise ValueError(f"patch_size {tuple(self.patch_size)} does not divide the {self.latent_frames} latent "
                             "frames")
        for name in ("vae_latents_mean", "vae_latents_std"):
            if getattr(self, name) and len(getattr(self, name)) != self.vae_z_dim:
                raise ValueError(f"{name} needs vae_z_dim={self.vae_z_dim} entries")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim {self.text_dim} must split into {self.text_heads} heads")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout {self.caption_dropout} must be in [0, 1)")
        if self.guidance_scale != 1.0 and self.caption_dropout == 0.0:
            raise ValueError(f"guidance_scale {self.guidance_scale} needs a generator pretrained with caption "
                             "dropout (model.caption_dropout > 0); sample this one with guidance_scale=1")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae_dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(map(bool, self.vae_temporal_downsample))

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // self.temporal_factor + 1

    @property
    def latent_side(self) -> int:
        return self.image_size // self.spatial_factor

    def vae(self) -> WanVAEConfig:
        z = self.vae_z_dim
        return WanVAEConfig(base_dim=self.vae_base_dim, z_dim=z, dim_mult=tuple(self.vae_dim_mult),
                            num_res_blocks=self.vae_res_blocks,
                            temperal_downsample=tuple(self.vae_temporal_downsample),
                            latents_mean=tuple(self.vae_latents_mean) or (0.0,) * z,
                            latents_std=tuple(self.vae_latents_std) or (1.0,) * z,
                            scale_factor_temporal=self.temporal_factor, scale_factor_spatial=self.spatial_factor,
                            param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat,
                            attention=self.attention)

    def umt5(self) -> UMT5Config:
        return UMT5Config(vocab_size=self.vocab_size, d_model=self.text_dim, d_kv=self.text_dim // self.text_heads,
                          d_ff=2 * self.text_dim, num_layers=self.text_layers, num_heads=self.text_heads,
                          relative_attention_num_buckets=8, relative_attention_max_distance=16,
                          feed_forward_proj="gated-gelu", **self._runtime())

    def wan(self) -> WanConfig:
        return WanConfig(patch_size=tuple(self.patch_size), num_attention_heads=self.heads,
                         attention_head_dim=self.head_dim, in_channels=self.vae_z_dim, out_channels=self.vae_z_dim,
                         text_dim=self.text_dim, freq_dim=self.freq_dim, ffn_dim=self.ffn_dim,
                         num_layers=self.layers, rope_max_seq_len=64, **self._runtime())

    def _runtime(self) -> dict:
        return dict(param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat, attention=self.attention)


class WorldVideoNet(nnx.Module):
    """The trainable part: text encoder and transformer."""

    def __init__(self, cfg: WorldVideoConfig, *, rngs: nnx.Rngs):
        self.text = UMT5Encoder(cfg.umt5(), rngs=rngs)
        self.transformer = WanTransformer(cfg.wan(), rngs=rngs)


def motion_words() -> list[str]:
    """Every word (and the comma) a motion prompt can use."""
    return sorted({*prompt_words(), ",", "moving", "staying", *MOTIONS})


class MovingWorld:
    """What the loops ask of a moving-world generator beyond its model (the pretraining's eval, the
    fine-tuning loop's prompts, anchor and eval); ``world`` is its WorldVideoConfig."""

    def prompts(self, data) -> tuple[list[str], list[MotionScene]]:
        """The moving world's prompt split (``data.prompt_seed``, ``train_prompts``,
        ``eval_prompts``, ``motion_kinds``): training prompts and held-out motion scenes."""
        kinds = tuple(data.get("motion_kinds") or MOTION_KINDS)
        train, heldout = motion_prompt_split(data.prompt_seed, data.train_prompts, data.eval_prompts, kinds)
        return [s.prompt for s in train], heldout

    def caption_images(self, length: int, seed: int) -> RenderedClips:
        """Faithful rendered clips of random motion scenes: the anchor's caption-clip pairs."""
        return RenderedClips(length, seed=seed, image_size=self.world.image_size, frames=self.world.frames)

    def heldout_evaluator(self, sampler, heldout, samples_per_prompt: int):
        """The motion judge on held-out motion scenes; None for prompt strings (a prompt file)."""
        if not heldout or not all(isinstance(s, MotionScene) for s in heldout):
            return None
        return MotionJudgeEval(sampler, self, heldout, samples_per_prompt)


class WorldVideoGenerator(MovingWorld):
    kind = "world_video"

    def __init__(self, cfg: WorldVideoConfig, tokenizer, folder: str | None = None, seed: int = 0):
        self.cfg, self.tokenizer, self.folder, self.seed = cfg, tokenizer, folder, seed
        self.image_shape = (cfg.frames, cfg.image_size, cfg.image_size, 3)
        self.latent_grid = (cfg.latent_frames, cfg.latent_side, cfg.latent_side)
        self.latent_shape = (int(np.prod(self.latent_grid)), cfg.vae_z_dim)
        self.schedule = flow_match.ScheduleConfig(use_dynamic_shifting=False, shift=cfg.shift)
        self.frozen: dict = {}
        self.vae_def = nnx.split(nnx.eval_shape(self.make_vae), nnx.Param)[0]

    @property
    def world(self) -> WorldVideoConfig:
        return self.cfg

    # ----- construction
    @staticmethod
    def write_tokenizer(folder: str) -> str:
        """The moving world's word tokenizer (every prompt word is one token) saved in ``folder``."""
        from rdance.data.tokenizer import build_word_tokenizer
        return build_word_tokenizer([" ".join(motion_words())], folder)

    @classmethod
    def create(cls, sizes: dict, tokenizer_dir: str, seed: int = 0) -> "WorldVideoGenerator":
        """A fresh generator (random VAE until rdance.world.video_autoencoder trains one);
        ``sizes`` are WorldVideoConfig fields (the config's ``model`` section)."""
        tokenizer = _load_tokenizer(tokenizer_dir)
        gen = cls(config_of_sizes(WorldVideoConfig, sizes, tokenizer), tokenizer, None, seed)
        gen.frozen = {"vae": nnx.to_pure_dict(nnx.state(gen.make_vae(), nnx.Param))}
        return gen

    def make_vae(self) -> AutoencoderKLWan:
        return AutoencoderKLWan(self.cfg.vae(), rngs=nnx.Rngs(self.seed))

    def with_vae(self, vae_params: dict, mean: Sequence[float], std: Sequence[float]) -> "WorldVideoGenerator":
        """This generator with a trained VAE and its measured per-channel latent mean and std."""
        cfg = dataclasses.replace(self.cfg, vae_latents_mean=tuple(map(float, mean)),
                                  vae_latents_std=tuple(map(float, std)))
        gen = type(self)(cfg, self.tokenizer, self.folder, self.seed)
        gen.frozen = {"vae": vae_params}
        return gen

    @classmethod
    def _open_folder(cls, folder: str, **runtime) -> "WorldVideoGenerator":
        cfg = read_folder_config(folder, CONFIG_FILE, cls.kind, WorldVideoConfig, runtime,
                                 "python -m rdance.run.pretrain_generator --config=experiments/video_smoke.py "
                                 "writes one to WORKDIR/export")
        return cls(cfg, _load_tokenizer(os.path.join(folder, "tokenizer")), folder)

    @classmethod
    def from_pretrained(cls, folder: str, mesh=None, rules=sharding.DEFAULT_RULES, **runtime):
        """A generator folder with its frozen VAE loaded; :meth:`initial_params` reads the rest."""
        gen = cls._open_folder(folder, **runtime)
        vae = load_vae(os.path.join(folder, "vae"), mesh=mesh, rules=rules, **gen.cfg._runtime())
        gen.frozen = {"vae": nnx.to_pure_dict(nnx.state(vae, nnx.Param))}
        return gen

    def make_model(self) -> WorldVideoNet:
        return WorldVideoNet(self.cfg, rngs=nnx.Rngs(self.seed))

    def initial_params(self, mesh, rules) -> dict | None:
        return folder_params(self.folder, load_umt5, load_transformer, mesh, rules, self.cfg._runtime())

    # ----- the generator interface
    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        return word_tokens(self.tokenizer, prompts, self.cfg.max_tokens, motion_words())

    def drop_captions(self, tokens: dict, key: jax.Array, ids: jax.Array) -> dict:
        """Caption dropout: a row's mask zeroed (so its text features are all zero, the empty
        caption) with probability ``caption_dropout``, drawn per sample id."""
        if not self.cfg.caption_dropout:
            return tokens
        keep = genlib.per_sample_uniform(key, ids) >= self.cfg.caption_dropout
        return {"ids": tokens["ids"], "mask": jnp.where(keep[:, None], tokens["mask"], 0)}

    def condition(self, model: WorldVideoNet, frozen, tokens) -> dict:
        """UMT5 features, zero past each prompt's tokens (as WanPipeline.encode_prompt)."""
        del frozen
        hidden = model.text(tokens["ids"], tokens["mask"])
        return {"text": hidden * tokens["mask"][..., None].astype(hidden.dtype)}

    def pack(self, latents: jax.Array) -> jax.Array:
        """NCTHW latents -> tokens [B, T*h*w, C], frame-major."""
        b, c = latents.shape[:2]
        return jnp.transpose(latents, (0, 2, 3, 4, 1)).reshape(b, -1, c)

    def unpack(self, tokens: jax.Array) -> jax.Array:
        b, _, c = tokens.shape
        return jnp.transpose(tokens.reshape(b, *self.latent_grid, c), (0, 4, 1, 2, 3))

    def velocity(self, model: WorldVideoNet, cond, guided: bool = True):
        """v(x, t) on packed latents; t in [0, 1] (Wan's timestep is 1000 t). Guided, with
        guidance_scale != 1, against the empty caption (zero text features)."""
        def plain(x, t, text):
            timestep = jnp.broadcast_to(jnp.asarray(t, jnp.float32) * 1000.0, (x.shape[0],))
            return self.pack(model.transformer(self.unpack(x), timestep, text))

        def v(x, t):
            v_prompt = plain(x, t, cond["text"])
            if not guided or self.cfg.guidance_scale == 1.0:
                return v_prompt
            v_empty = plain(x, t, jnp.zeros_like(cond["text"]))
            return v_empty + self.cfg.guidance_scale * (v_prompt - v_empty)
        return v

    def _vae(self, frozen) -> AutoencoderKLWan:
        if "vae" not in frozen:
            raise ValueError("this world video generator decodes through its VAE, and frozen holds none")
        return nnx.merge(self.vae_def, frozen["vae"])

    def decode(self, frozen, latents) -> jax.Array:
        """Packed latents -> clips [B, F, H, W, 3] in [0, 1], through the VAE decoder (differentiable)."""
        return video_to_clips(self._vae(frozen).decode_latents(self.unpack(latents.astype(jnp.float32))))

    def encode(self, frozen, clips) -> jax.Array:
        """uint8 clips [B, F, H, W, 3] -> packed latents (the VAE's normalised posterior mean)."""
        return self.pack(self._vae(frozen).encode_latents(clips_to_video(clips)).astype(jnp.float32))

    def export(self, params, folder: str) -> str:
        """A diffusers WanPipeline folder, plus world_video.json. ``params`` and ``frozen`` must be
        addressable here (host arrays)."""
        model = nnx.merge(nnx.split(nnx.eval_shape(self.make_model), nnx.Param)[0], params)
        os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
        with open(os.path.join(folder, CONFIG_FILE), "w") as f:
            json.dump(dict(cfglib.to_dict(self.cfg), kind=self.kind), f, indent=2)
        index = {"_class_name": "WanPipeline", "_diffusers_version": "0.42.1",
                 "scheduler": ["diffusers", SCHEDULER["_class_name"]],
                 "text_encoder": ["transformers", "UMT5EncoderModel"],
                 "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
                 "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
                 "transformer_2": [None, None], "boundary_ratio": None, "expand_timesteps": False}
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump(index, f, indent=2)
        with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(dict(SCHEDULER, shift=self.cfg.shift), f, indent=2)
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        export_umt5(model.text, os.path.join(folder, "text_encoder"))
        export_transformer(model.transformer, os.path.join(folder, "transformer"))
        export_vae(self._vae(jax.device_get(self.frozen)), os.path.join(folder, "vae"))
        return folder
