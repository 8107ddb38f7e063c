"""The synthetic world's generator: a small FLUX transformer in pixel space, conditioned by a small
T5 encoder over the world's word tokenizer.

There is no VAE: the "latents" are the pixels themselves. A 32x32x3 image in [-1, 1] is cut into
4x4 patches, each a token of 48 channels (channel-major, like FLUX's packing), so the transformer
sees 64 image tokens with rotary ids over the 8x8 grid. ``decode`` is therefore the identity up
to layout and range: unpatchify and map [-1, 1] to [0, 1]. The pooled text vector that FLUX takes
from CLIP is the masked mean of the T5 states. Text encoder and transformer train together.

A generator folder (``export``) holds ``generator.json`` (sizes and schedule), ``tokenizer/``,
``text_encoder/`` (transformers T5EncoderModel layout) and ``transformer/`` (diffusers
FluxTransformer2DModel layout), so its parts load in transformers and diffusers as well.
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
from rdance.models import attention as attnlib
from rdance.models.flux import config as flux_config_lib, export_t5, export_transformer, load_t5, load_transformer
from rdance.models.flux.t5 import T5Config, T5Encoder
from rdance.models.flux.transformer import FluxConfig, FluxTransformer

CONFIG_FILE = "generator.json"


@dataclasses.dataclass(frozen=True)
class WorldGeneratorConfig:
    image_size: int = 32
    patch_size: int = 4
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
        if self.image_size % self.patch_size:
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
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def t5(self) -> T5Config:
        return T5Config(vocab_size=self.vocab_size, d_model=self.text_dim, d_kv=self.text_dim // self.text_heads,
                        d_ff=2 * self.text_dim, num_layers=self.text_layers, num_heads=self.text_heads,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        feed_forward_proj="gated-gelu", **self._runtime())

    def flux(self) -> FluxConfig:
        return FluxConfig(patch_size=1, in_channels=3 * self.patch_size ** 2, num_layers=self.double_layers,
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
        self.latent_shape = (cfg.grid * cfg.grid, 3 * cfg.patch_size ** 2)
        self.schedule = flow_match.ScheduleConfig(use_dynamic_shifting=False, shift=cfg.shift)
        self.frozen: dict = {}
        # Rotary ids over the patch grid: image_ids takes the 2x2-packed latent size, i.e. 2 * grid.
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
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(sizes).items()}
        # Rows padded to a multiple of 16 so the embedding splits over tensor-parallel meshes.
        cfg = WorldGeneratorConfig(**dict(values, vocab_size=-(-len(tokenizer) // 16) * 16))
        return cls(cfg, tokenizer, None, seed)

    @classmethod
    def from_pretrained(cls, folder: str, **runtime) -> "WorldGenerator":
        path = os.path.join(folder, CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {folder} is not a world generator folder "
                                    "(python -m rdance.run.pretrain_generator writes one to WORKDIR/export)")
        raw = json.load(open(path))
        if raw.pop("kind", None) != cls.kind:
            raise ValueError(f"{path} describes a {raw.get('kind')!r} generator, not 'world'")
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        cfg = WorldGeneratorConfig(**dict(raw, **runtime))
        return cls(cfg, _load_tokenizer(os.path.join(folder, "tokenizer")), folder)

    @classmethod
    def abstract(cls, folder: str, **runtime) -> "WorldGenerator":
        """Shapes only: a generator folder's config and tokenizer are all it reads (its weights
        are read by :meth:`initial_params` alone), so this is :meth:`from_pretrained`."""
        return cls.from_pretrained(folder, **runtime)

    @classmethod
    def open(cls, cfg, mesh, rules, abstract: bool = False) -> "WorldGenerator":
        """A config's ``generator`` section (kind 'world'): ``path`` a generator folder."""
        del mesh, rules   # the world's parameters are placed by initial_params
        if not cfg.path:
            raise ValueError(f"generator.kind={cfg.kind!r} needs generator.path (a folder from "
                             "python -m rdance.run.pretrain_generator; the fit check reads only its config)")
        runtime = {"attention": attnlib.from_config(cfg)} if cfg.get("attention") else {}   # else the folder's
        return cls.abstract(cfg.path, **runtime) if abstract else cls.from_pretrained(cfg.path, **runtime)

    def make_model(self) -> WorldGeneratorNet:
        return WorldGeneratorNet(self.cfg, rngs=nnx.Rngs(self.seed))

    def initial_params(self, mesh, rules) -> dict | None:
        if self.folder is None:
            return None
        runtime = self.cfg._runtime()
        text = load_t5(os.path.join(self.folder, "text_encoder"), mesh=mesh, rules=rules, **runtime)
        transformer = load_transformer(os.path.join(self.folder, "transformer"), mesh=mesh, rules=rules, **runtime)
        return {"text": nnx.to_pure_dict(nnx.state(text, nnx.Param)),
                "transformer": nnx.to_pure_dict(nnx.state(transformer, nnx.Param))}

    # ----- the interface
    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts to tokenize")
        ids = self.tokenizer(prompts).input_ids
        for prompt, row in zip(prompts, ids):
            if len(row) > self.cfg.max_tokens:
                raise ValueError(f"prompt {prompt!r} has {len(row)} tokens; the generator reads at most "
                                 f"{self.cfg.max_tokens} (model.max_tokens)")
            if self.tokenizer.unk_token_id in row:
                raise ValueError(f"prompt {prompt!r} has words outside the generator's vocabulary "
                                 f"({', '.join(prompt_words())})")
        out = np.full((len(prompts), self.cfg.max_tokens), self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros_like(out)
        for i, row in enumerate(ids):
            out[i, :len(row)], mask[i, :len(row)] = row, 1
        return {"ids": out, "mask": mask}

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

    def decode(self, frozen, latents) -> jax.Array:
        """Pixel space: unpatchify and map [-1, 1] to [0, 1] (clipped)."""
        del frozen
        images = unpatchify(latents.astype(jnp.float32), self.cfg.image_size, self.cfg.patch_size)
        return jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)

    def encode(self, frozen, images) -> jax.Array:
        del frozen
        return patchify(jnp.asarray(images, jnp.float32) / 127.5 - 1.0, self.cfg.patch_size)

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
        """generator.json, tokenizer/, text_encoder/ (transformers T5) and transformer/ (diffusers).

        ``params`` must be addressable here (host arrays: see rdance.train.host.to_host)."""
        model = nnx.merge(nnx.split(nnx.eval_shape(self.make_model), nnx.Param)[0], params)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, CONFIG_FILE), "w") as f:
            json.dump(dict(flux_config_lib.to_dict(self.cfg), kind=self.kind), f, indent=2)
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        export_t5(model.text, os.path.join(folder, "text_encoder"))
        export_transformer(model.transformer, os.path.join(folder, "transformer"))
        return folder


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer  # the word-level tokenizer files, no model code
    return AutoTokenizer.from_pretrained(folder)


def open_folder_sampler(folder: str, mesh, rules, num_steps: int, chunk: int, seed: int,
                        guidance_scale: float | None = None):
    """(generator, Sampler, parameters on ``mesh``) of an exported world generator folder, sampled
    with its own guidance scale or ``guidance_scale``."""
    gen = WorldGenerator.from_pretrained(folder, **({} if guidance_scale is None else
                                                    {"guidance_scale": guidance_scale}))
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    return gen, Sampler(gen, graphdef, mesh, num_steps, chunk, seed), gen.initial_params(mesh, rules)
