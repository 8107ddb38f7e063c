"""The synthetic world's generator: a miniature FLUX. A small FLUX transformer, conditioned by a
small T5 encoder over the world's word tokenizer, generates the latents of a small ``AutoencoderKL``
of the FLUX VAE's architecture (rdance.models.flux.vae at tiny width).

With ``vae_channels`` set (the recipe's default, experiments/gen_smoke.py) the VAE is trained first on
world renders (rdance.world.autoencoder) and then frozen: ``encode`` maps renders to scaled latents
for flow matching, ``decode`` is the VAE decoder, differentiable, which sampling, ReFL and RWR go
through exactly as with FLUX (``frozen["vae"]``). The VAE downsamples by 2^(len(vae_channels) - 1);
``vae_pack=2`` packs its latents 2x2 into tokens as FLUX does, ``vae_pack=1`` makes every latent
pixel a token. E.g. at 32x32, ``vae_channels=(16, 32)`` packed 2x2 gives 64 tokens of
4 x ``vae_latent_channels``; ``(16, 32, 32)`` unpacked gives 64 tokens of ``vae_latent_channels``.

With ``vae_channels=()`` (folders written before the VAE) there is no VAE: the "latents" are the
pixels themselves, cut into ``patch_size`` patches (channel-major, like FLUX's packing), and
``decode`` is unpatchify and map [-1, 1] to [0, 1].

The pooled text vector that FLUX takes from CLIP is the masked mean of the T5 states. Text
encoder and transformer train together.

A generator folder (``export``) holds ``generator.json`` (sizes and schedule), ``tokenizer/``,
``text_encoder/`` (transformers T5EncoderModel layout), ``transformer/`` (diffusers
FluxTransformer2DModel layout) and, with a VAE, ``vae/`` (diffusers AutoencoderKL layout), so its
parts load in transformers and diffusers as well.
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

from rdance.world.captions import RenderedCaptions, world_prompt_split
from rdance.train.generator_eval import Sampler
from rdance.world.evaluate import JudgeEval
from rdance.world.prompts import COLOURS, NUMBER_WORDS, RELATIONS, SHAPES, Scene
from rdance.diffusion import flow_match, generator as genlib
from rdance.core import sharding
from rdance.models import attention as attnlib
from rdance.models.flux import (config as flux_config_lib, export_t5, export_transformer, export_vae, load_t5,
                                load_transformer, load_vae)
from rdance.models.flux.t5 import T5Config, T5Encoder
from rdance.models.flux.transformer import FluxConfig, FluxTransformer
from rdance.models.flux.vae import AutoencoderKL, VAEConfig

CONFIG_FILE = "generator.json"


@dataclasses.dataclass(frozen=True)
class WorldGeneratorConfig:
    image_size: int = 32
    patch_size: int = 4            # pixel space only (no VAE): the side of a pixel patch token
    # The VAE (AutoencoderKL, FLUX's architecture): its block widths (downsampling 2^(len-1));
    # () is pixel space, no VAE.
    vae_channels: tuple[int, ...] = ()
    # Latent pixels per token side: 2 packs 2x2 as FLUX does; 1 makes each latent pixel a token.
    vae_pack: int = 2
    vae_latent_channels: int = 4
    vae_layers: int = 1            # resnet blocks per encoder level (the decoder has one more)
    vae_groups: int = 8            # GroupNorm groups; divides every width
    vae_scale: float = 1.0         # latents = (z - vae_shift) * vae_scale, measured after VAE training
    vae_shift: float = 0.0
    max_tokens: int = 12
    vocab_size: int = 0            # set from the tokenizer
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    heads: int = 4
    head_dim: int = 32
    double_layers: int = 2
    single_layers: int = 2
    axes_dims_rope: tuple[int, ...] = (8, 12, 12)
    shift: float = 1.0             # static schedule shift (no resolution-dependent shift)
    # Classifier-free guidance. Pretraining replaces this fraction of captions by the empty
    # caption, which teaches the unconditional velocity that sampling guides away from:
    # v = v_empty + guidance_scale * (v_prompt - v_empty). 1.0 samples without guidance.
    caption_dropout: float = 0.0
    guidance_scale: float = 1.0
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"        # rdance.models.attention (T5 and the transformer)

    def __post_init__(self):
        if self.vae_channels:
            if self.vae_pack not in (1, 2):
                raise ValueError(f"vae_pack {self.vae_pack}: 2 packs the latents 2x2 as FLUX does, 1 makes "
                                 "each latent pixel a token; nothing else")
            unit = self.vae_pack * self.vae_factor
            if self.image_size % unit:
                raise ValueError(f"image_size {self.image_size} is not a multiple of {unit} (the VAE's "
                                 f"downsampling {self.vae_factor} x vae_pack {self.vae_pack})")
            if any(c < 1 or c % self.vae_groups for c in self.vae_channels) or self.vae_groups < 1:
                raise ValueError(f"vae_channels {tuple(self.vae_channels)} must be positive multiples of "
                                 f"vae_groups {self.vae_groups}")
            if self.vae_latent_channels < 1 or self.vae_layers < 1:
                raise ValueError(f"vae_latent_channels {self.vae_latent_channels} and vae_layers "
                                 f"{self.vae_layers} must be at least 1")
            if not self.vae_scale > 0:
                raise ValueError(f"vae_scale {self.vae_scale} must be positive")
        elif self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim {self.text_dim} must split into {self.text_heads} heads")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout {self.caption_dropout} must be in [0, 1)")
        if self.guidance_scale != 1.0 and self.caption_dropout == 0.0:
            raise ValueError(f"guidance_scale {self.guidance_scale} needs a generator pretrained with caption "
                             "dropout (model.caption_dropout > 0), which teaches the unconditional branch "
                             "that guidance uses; sample this one with guidance_scale=1")

    @property
    def vae_factor(self) -> int:
        """The VAE's downsampling (1 without a VAE)."""
        return 2 ** (len(self.vae_channels) - 1) if self.vae_channels else 1

    @property
    def grid(self) -> int:
        """Image tokens per side."""
        return self.image_size // (self.vae_pack * self.vae_factor) if self.vae_channels else self.image_size // self.patch_size

    @property
    def token_dim(self) -> int:
        return self.vae_pack ** 2 * self.vae_latent_channels if self.vae_channels else 3 * self.patch_size ** 2

    def vae(self) -> VAEConfig:
        n = len(self.vae_channels)
        return VAEConfig(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(self.vae_channels), layers_per_block=self.vae_layers,
                         latent_channels=self.vae_latent_channels, norm_num_groups=self.vae_groups,
                         sample_size=self.image_size, scaling_factor=self.vae_scale, shift_factor=self.vae_shift,
                         **self._runtime())

    def t5(self) -> T5Config:
        return T5Config(vocab_size=self.vocab_size, d_model=self.text_dim, d_kv=self.text_dim // self.text_heads,
                        d_ff=2 * self.text_dim, num_layers=self.text_layers, num_heads=self.text_heads,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        feed_forward_proj="gated-gelu", **self._runtime())

    def flux(self) -> FluxConfig:
        return FluxConfig(patch_size=1, in_channels=self.token_dim, num_layers=self.double_layers,
                          num_single_layers=self.single_layers, attention_head_dim=self.head_dim,
                          num_attention_heads=self.heads, joint_attention_dim=self.text_dim,
                          pooled_projection_dim=self.text_dim, guidance_embeds=False,
                          axes_dims_rope=tuple(self.axes_dims_rope), **self._runtime())

    def _runtime(self) -> dict:
        return dict(param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat, attention=self.attention)


class WorldGeneratorNet(nnx.Module):
    """The trainable part: text encoder and transformer."""

    def __init__(self, cfg: WorldGeneratorConfig, *, rngs: nnx.Rngs):
        self.text = T5Encoder(cfg.t5(), rngs=rngs)
        self.transformer = FluxTransformer(cfg.flux(), rngs=rngs)


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, 3] -> [B, (H/p)(W/p), 3 p p] tokens, channel-major within a patch."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: jax.Array, size: int, patch: int) -> jax.Array:
    """Inverse of :func:`patchify` for square images of side ``size``."""
    b, _, d = tokens.shape
    g, c = size // patch, d // (patch * patch)
    x = tokens.reshape(b, g, g, c, patch, patch).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, size, size, c)


def prompt_words() -> list[str]:
    """Every word a world prompt can use (prompts.py composes them from these)."""
    words = {"a", "and", *COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *NUMBER_WORDS.values()}
    words |= {w for relation in RELATIONS for w in relation.split()}
    return sorted(words)


class WorldGenerator:
    kind = "world"

    def __init__(self, cfg: WorldGeneratorConfig, tokenizer, folder: str | None = None, seed: int = 0):
        self.cfg, self.tokenizer, self.folder, self.seed = cfg, tokenizer, folder, seed
        self.image_shape = (cfg.image_size, cfg.image_size, 3)
        self.latent_shape = (cfg.grid * cfg.grid, cfg.token_dim)
        self.schedule = flow_match.ScheduleConfig(use_dynamic_shifting=False, shift=cfg.shift)
        # {"vae": its parameters} with a VAE (set by with_vae or a folder's loaders), else {}.
        self.frozen: dict = {}
        self.vae_def = (nnx.split(nnx.eval_shape(self.make_vae), nnx.Param)[0] if cfg.vae_channels else None)
        # Rotary ids over the token grid (image_ids takes twice its side: FLUX's packed latent size).
        self.img_ids = flow_match.image_ids(2 * cfg.grid, 2 * cfg.grid)
        self.txt_ids = np.zeros((cfg.max_tokens, 3), np.float32)

    # ----- construction
    @staticmethod
    def write_tokenizer(folder: str) -> str:
        """The world's word tokenizer (every prompt word is one token) saved in ``folder``."""
        from rdance.data.tokenizer import build_word_tokenizer
        return build_word_tokenizer([" ".join(prompt_words())], folder)

    @classmethod
    def create(cls, sizes: dict, tokenizer_dir: str, seed: int = 0) -> "WorldGenerator":
        """A fresh (randomly initialised) generator; ``sizes`` are WorldGeneratorConfig fields
        (the config's ``model`` section), ``tokenizer_dir`` holds :meth:`write_tokenizer`'s files."""
        tokenizer = _load_tokenizer(tokenizer_dir)
        gen = cls(config_of_sizes(WorldGeneratorConfig, sizes, tokenizer), tokenizer, None, seed)
        if gen.cfg.vae_channels:   # a random VAE until rdance.world.autoencoder.train_vae trains one
            gen.frozen = {"vae": nnx.to_pure_dict(nnx.state(gen.make_vae(), nnx.Param))}
        return gen

    def make_vae(self) -> AutoencoderKL:
        return AutoencoderKL(self.cfg.vae(), rngs=nnx.Rngs(self.seed))

    def with_vae(self, vae_params: dict, scale: float, shift: float) -> "WorldGenerator":
        """This generator with a trained VAE (its parameters, and the latent scale and shift
        measured on its latents) as ``frozen["vae"]``."""
        cfg = dataclasses.replace(self.cfg, vae_scale=float(scale), vae_shift=float(shift))
        gen = WorldGenerator(cfg, self.tokenizer, self.folder, self.seed)
        gen.frozen = {"vae": vae_params}
        return gen

    @classmethod
    def _open_folder(cls, folder: str, **runtime) -> "WorldGenerator":
        cfg = read_folder_config(folder, CONFIG_FILE, cls.kind, WorldGeneratorConfig, runtime,
                                 "python -m rdance.run.pretrain_generator writes one to WORKDIR/export")
        return cls(cfg, _load_tokenizer(os.path.join(folder, "tokenizer")), folder)

    @classmethod
    def from_pretrained(cls, folder: str, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> "WorldGenerator":
        """A generator folder with its frozen VAE loaded (on ``mesh`` when given); the trainable
        parameters are read by :meth:`initial_params`."""
        gen = cls._open_folder(folder, **runtime)
        if gen.cfg.vae_channels:
            vae = load_vae(os.path.join(folder, "vae"), mesh=mesh, rules=rules, **gen.cfg._runtime())
            gen.frozen = {"vae": nnx.to_pure_dict(nnx.state(vae, nnx.Param))}
        return gen

    @classmethod
    def abstract(cls, folder: str, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> "WorldGenerator":
        """Shapes only: a generator folder's config and tokenizer are all it reads; the frozen
        VAE is ShapeDtypeStructs (sharded on ``mesh`` when given)."""
        gen = cls._open_folder(folder, **runtime)
        if gen.cfg.vae_channels:
            if mesh is None:
                gen.frozen = {"vae": nnx.to_pure_dict(nnx.split(nnx.eval_shape(gen.make_vae), nnx.Param)[1])}
            else:
                gen.frozen = {"vae": sharding.sharded_shapes(gen.make_vae, mesh, rules)[1]}
        return gen

    @classmethod
    def open(cls, cfg, mesh, rules, abstract: bool = False) -> "WorldGenerator":
        """A config's ``generator`` section (kind 'world'): ``path`` a generator folder."""
        if not cfg.path:
            raise ValueError(f"generator.kind={cfg.kind!r} needs generator.path (a folder from "
                             "python -m rdance.run.pretrain_generator; the fit check reads only its config)")
        runtime = {"attention": attnlib.from_config(cfg)} if cfg.get("attention") else {}   # else the folder's
        return (cls.abstract if abstract else cls.from_pretrained)(cfg.path, mesh, rules, **runtime)

    def make_model(self) -> WorldGeneratorNet:
        return WorldGeneratorNet(self.cfg, rngs=nnx.Rngs(self.seed))

    def initial_params(self, mesh, rules) -> dict | None:
        return folder_params(self.folder, load_t5, load_transformer, mesh, rules, self.cfg._runtime())

    # ----- the interface
    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        return word_tokens(self.tokenizer, prompts, self.cfg.max_tokens, prompt_words())

    def drop_captions(self, tokens: dict, key: jax.Array, ids: jax.Array) -> dict:
        """Pretraining's caption dropout: each row (by id, as the noise is drawn) becomes the empty
        caption with probability ``caption_dropout``."""
        if not self.cfg.caption_dropout:
            return tokens
        keep = genlib.per_sample_uniform(key, ids) >= self.cfg.caption_dropout
        return {"ids": jnp.where(keep[:, None], tokens["ids"], self.tokenizer.pad_token_id),
                "mask": jnp.where(keep[:, None], tokens["mask"], 0)}

    def _encode_text(self, model: WorldGeneratorNet, ids, mask) -> tuple[jax.Array, jax.Array]:
        hidden = model.text(ids, mask)
        m = mask[..., None].astype(hidden.dtype)
        return hidden, (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

    def condition(self, model: WorldGeneratorNet, frozen, tokens) -> dict:
        """Text states and their pooled mean; with guidance, also those of the empty caption
        (all padding under a zero mask: exactly what caption dropout trains on)."""
        del frozen
        hidden, pooled = self._encode_text(model, tokens["ids"], tokens["mask"])
        cond = dict(prompt_embeds=hidden, pooled=pooled)
        if self.cfg.guidance_scale != 1.0:
            empty = jnp.full((1, self.cfg.max_tokens), self.tokenizer.pad_token_id, jnp.int32)
            cond["empty_embeds"], cond["empty_pooled"] = self._encode_text(model, empty, jnp.zeros_like(empty))
        return cond

    def velocity(self, model: WorldGeneratorNet, cond, guided: bool = True):
        """v(x, t); guided (when the conditioning holds the empty caption's states) by
        classifier-free guidance. Training losses pass guided=False: they fit the plain velocity."""
        img_ids, txt_ids = jnp.asarray(self.img_ids), jnp.asarray(self.txt_ids)

        def plain(x, timestep, embeds, pooled):
            return model.transformer(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                                     timestep=timestep, img_ids=img_ids, txt_ids=txt_ids)

        def v(x, t):
            timestep = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
            v_prompt = plain(x, timestep, cond["prompt_embeds"], cond["pooled"])
            if not guided or "empty_embeds" not in cond:
                return v_prompt
            b = x.shape[0]
            v_empty = plain(x, timestep, jnp.broadcast_to(cond["empty_embeds"], (b, *cond["empty_embeds"].shape[1:])),
                            jnp.broadcast_to(cond["empty_pooled"], (b, cond["empty_pooled"].shape[-1])))
            return v_empty + self.cfg.guidance_scale * (v_prompt - v_empty)
        return v

    def _vae(self, frozen) -> AutoencoderKL:
        if "vae" not in frozen:
            raise ValueError("this world generator decodes through its VAE, and frozen holds none "
                             "(train it with rdance.run.pretrain_generator or open a generator folder)")
        return nnx.merge(self.vae_def, frozen["vae"])

    def decode(self, frozen, latents) -> jax.Array:
        """Packed latents -> images [B, H, W, 3] in [0, 1] (clipped): through the VAE decoder (in
        the gradient path), or in pixel space unpatchify and map [-1, 1] to [0, 1]."""
        latents = latents.astype(jnp.float32)
        if self.cfg.vae_channels:
            side = self.cfg.image_size // self.cfg.vae_factor
            images = self._vae(frozen).decode_latents(flow_match.unpack(latents, side, side, self.cfg.vae_pack))
            images = jnp.transpose(images.astype(jnp.float32), (0, 2, 3, 1))
        else:
            images = unpatchify(latents, self.cfg.image_size, self.cfg.patch_size)
        return jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)

    def encode(self, frozen, images) -> jax.Array:
        """uint8 images [B, H, W, 3] -> packed latents (the VAE's scaled posterior mean)."""
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        if self.cfg.vae_channels:
            latents = self._vae(frozen).encode_latents(jnp.transpose(x, (0, 3, 1, 2)))
            return flow_match.pack(latents.astype(jnp.float32), self.cfg.vae_pack)
        return patchify(x, self.cfg.patch_size)

    def prompts(self, data) -> tuple[list[str], list[Scene]]:
        """The world's own split (``data.prompt_seed``, ``train_prompts``, ``eval_prompts``):
        training prompts, and held-out scenes the judge can score."""
        train, heldout = world_prompt_split(data.prompt_seed, data.train_prompts, data.eval_prompts)
        return [s.prompt for s in train], heldout

    def caption_images(self, length: int, seed: int) -> RenderedCaptions:
        """Faithful renders of random scenes: the anchor's caption-image pairs."""
        return RenderedCaptions(length, seed=seed, image_size=self.image_shape[0])

    def heldout_evaluator(self, sampler, heldout, samples_per_prompt: int) -> JudgeEval | None:
        """The judge's alignment on held-out scenes; None for held-out prompt strings (a prompt file)."""
        if not heldout or not all(isinstance(s, Scene) for s in heldout):
            return None
        return JudgeEval(sampler, self, heldout, samples_per_prompt)

    def export(self, params, folder: str) -> str:
        """generator.json, tokenizer/, text_encoder/ (transformers T5), transformer/ (diffusers)
        and, with a VAE, vae/ (diffusers AutoencoderKL).

        ``params`` must be addressable here (host arrays: see rdance.train.host.to_host); so must
        ``frozen["vae"]``."""
        model = nnx.merge(nnx.split(nnx.eval_shape(self.make_model), nnx.Param)[0], params)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, CONFIG_FILE), "w") as f:
            json.dump(dict(flux_config_lib.to_dict(self.cfg), kind=self.kind), f, indent=2)
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        export_t5(model.text, os.path.join(folder, "text_encoder"))
        export_transformer(model.transformer, os.path.join(folder, "transformer"))
        if self.cfg.vae_channels:
            export_vae(self._vae(jax.device_get(self.frozen)), os.path.join(folder, "vae"))
        return folder


def folder_params(folder: str | None, load_text, load_transformer, mesh, rules, runtime: dict) -> dict | None:
    """{"text", "transformer"} parameters of a world generator folder (on ``mesh``), read by
    its text encoder's and transformer's loaders; None without a folder (random init)."""
    if folder is None:
        return None
    text = load_text(os.path.join(folder, "text_encoder"), mesh=mesh, rules=rules, **runtime)
    transformer = load_transformer(os.path.join(folder, "transformer"), mesh=mesh, rules=rules, **runtime)
    return {"text": nnx.to_pure_dict(nnx.state(text, nnx.Param)),
            "transformer": nnx.to_pure_dict(nnx.state(transformer, nnx.Param))}


def config_of_sizes(config_cls, sizes: dict, tokenizer):
    """``config_cls`` from a config's ``model`` section (lists as tuples), its vocab_size the
    tokenizer's; an unknown key is an error that lists the known ones."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(sizes).items()}
    known = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config keys model.{', model.'.join(unknown)} are not {config_cls.__name__} sizes; "
                         f"known: {', '.join(known)}")
    # Rows padded to a multiple of 16 so the embedding splits over tensor-parallel meshes.
    return config_cls(**dict(values, vocab_size=-(-len(tokenizer) // 16) * 16))


def read_folder_config(folder: str, config_file: str, kind: str, config_cls, runtime: dict, writer: str):
    """The generator config a folder's ``config_file`` holds, refused unless it is of ``kind``;
    ``runtime`` overrides (dtype, attention, ...); ``writer`` says what writes such folders."""
    path = os.path.join(folder, config_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {folder} is not a {kind} generator folder ({writer})")
    raw = json.load(open(path))
    if raw.pop("kind", None) != kind:
        raise ValueError(f"{path} describes a {raw.get('kind')!r} generator, not {kind!r}")
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return config_cls(**dict(raw, **runtime))


def word_tokens(tokenizer, prompts: Sequence[str], max_tokens: int, words: Sequence[str]) -> dict[str, np.ndarray]:
    """Prompts -> {"ids", "mask"} [B, max_tokens] through the world's word tokenizer, padded;
    a prompt longer than ``max_tokens`` or with a word outside ``words`` is an error."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to tokenize")
    ids = tokenizer(prompts).input_ids
    for prompt, row in zip(prompts, ids):
        if len(row) > max_tokens:
            raise ValueError(f"prompt {prompt!r} has {len(row)} tokens; the generator reads at most "
                             f"{max_tokens} (model.max_tokens)")
        if tokenizer.unk_token_id in row:
            raise ValueError(f"prompt {prompt!r} has words outside the generator's vocabulary ({', '.join(words)})")
    out = np.full((len(prompts), max_tokens), tokenizer.pad_token_id, np.int32)
    mask = np.zeros_like(out)
    for i, row in enumerate(ids):
        out[i, :len(row)], mask[i, :len(row)] = row, 1
    return {"ids": out, "mask": mask}


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer  # the word-level tokenizer files, no model code
    return AutoTokenizer.from_pretrained(folder)


def open_folder_sampler(folder: str, mesh, rules, num_steps: int, chunk: int, seed: int,
                        guidance_scale: float | None = None):
    """(generator, Sampler, parameters on ``mesh``) of an exported world generator folder, sampled
    with its own guidance scale or ``guidance_scale``."""
    gen = WorldGenerator.from_pretrained(folder, mesh, rules, **({} if guidance_scale is None else
                                                                {"guidance_scale": guidance_scale}))
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    return gen, Sampler(gen, graphdef, mesh, num_steps, chunk, seed), gen.initial_params(mesh, rules)
