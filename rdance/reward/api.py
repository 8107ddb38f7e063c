"""The reward model users call: load a trained RM folder, score images, explain a verdict.

    rm = RewardModel.from_pretrained("/tmp/rm/export")
    p = rm.score_pairwise(reference_images, images, prompts)     # P("yes"): image 2 beats image 1
    p = rm.score_pointwise(images, prompts, criteria="aesthetics")
    text = rm.explain(reference_images, images, prompts)          # the generated rationale

Scores are jitted and differentiable in the candidate images: ``rm.pairwise_fn`` /
``rm.pointwise_fn`` are pure functions ``(params, tokens, [references,] images) -> rewards``
that a fine-tuning step can take gradients through, with ``tokens`` from ``rm.tokens(...)``.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.models import internvl
from rdance.models.internvl.config import (BOOL, NON_NEGATIVE_INT, POSITIVE_INT, STRING, ConfigError, Section,
                                           read_json)
from rdance.reward import losses, templates as T, video
from rdance.reward.model import RewardNet, to_pixels
from rdance.reward.rows import ANSWER_FORMATS, PARADIGMS, RowBuilder, RowSpec
from rdance.reward.folder import HEAD_FILE, RM_CONFIG_FILE


class RewardModel:
    def __init__(self, vlm: internvl.InternVL, settings: dict, head: dict | None = None,
                 remat: str = "none", attention: str = "auto"):
        self.vlm, self.settings = vlm, settings
        self.paradigm = settings.get("paradigm", "pairwise")
        self.normalise = settings.get("normalise", True)
        cfg = vlm.config
        self.spec = RowSpec(paradigm=self.paradigm, answer_format=settings.get("answer_format", "none"),
                            criteria=settings.get("criteria", "alignment"),
                            max_prompt_tokens=settings.get("max_prompt_tokens", 512),
                            max_answer_tokens=settings.get("max_answer_tokens", 64),
                            image_size=cfg.vision.image_size, max_tiles=settings.get("max_tiles", 1),
                            tokens_per_tile=cfg.tokens_per_tile, video_frames=settings.get("video_frames", 0),
                            video_sampling=settings.get("video_sampling", "uniform"))
        self.template = T.TokenTemplate(vlm.tokenizer)
        self.builder = RowBuilder(self.template, self.spec)
        net = nnx.eval_shape(lambda: RewardNet(cfg, regression_head=head is not None, rngs=nnx.Rngs(0),
                                               remat=remat, attention=attention))
        self.graphdef = nnx.split(net, nnx.Param)[0]
        self.params = {"vlm": nnx.to_pure_dict(vlm.state)}
        if head is not None:
            self.params["head"] = jax.device_put(head, NamedSharding(vlm.mesh, P()))

    @classmethod
    def from_pretrained(cls, path: str, mesh=None, dtype=jnp.float32, *, rules=None, remat: str = "none",
                        attention: str = "auto", **overrides) -> "RewardModel":
        """An RM folder (``train_reward``'s export) or any InternVL ``*-hf`` folder (then the
        settings default to pairwise, normalised P(yes), alignment criteria). ``rules`` shard it
        like the model it judges (fine-tuning); ``remat`` (a name in rdance.models.remat)
        recomputes its layers when a reward gradient is taken through it; ``attention`` names the
        attention implementation (rdance.models.attention)."""
        settings = read_settings(path, overrides)  # before the weights: a bad file fails fast
        vlm = internvl.load(path, mesh=mesh, dtype=dtype, rules=rules or sharding.DEFAULT_RULES,
                            attention=attention)
        head = None
        if settings.get("paradigm") == "regressive":
            head_file = os.path.join(path, HEAD_FILE)
            if not os.path.exists(head_file):
                raise FileNotFoundError(f"{path} is a regressive RM but has no {HEAD_FILE}")
            head = dict(np.load(head_file))
        return cls(vlm, settings, head, remat=remat, attention=attention)

    @classmethod
    def abstract(cls, path: str, mesh=None, dtype=jnp.float32, *, rules=None, remat: str = "none",
                 attention: str = "auto", settings: dict | None = None) -> "RewardModel":
        """The RM with sharded ShapeDtypeStructs for parameters, for lowering a step from shapes
        alone: reads ``path``'s config.json, tokenizer and (unless ``settings`` are given)
        reward_config.json, never its weights. Generative RMs only (a regressive head's weights
        are not shapes)."""
        settings = read_settings(path, {}) if settings is None else settings
        if settings.get("paradigm") == "regressive":
            raise ValueError(f"{path} is a regressive RM: only generative RMs (pairwise or pointwise P(yes)) "
                             "have an abstract form")
        vlm_config = internvl.load_config(path)
        graphdef, state = internvl.api.abstract_model(vlm_config, jnp.dtype(dtype), attention=attention)
        state = sharding.with_shardings(state, sharding.state_shardings(state, mesh, rules or sharding.DEFAULT_RULES))
        return cls(internvl.InternVL(graphdef, state, vlm_config, mesh, path), settings, remat=remat,
                   attention=attention)

    # ----- tokens: depend on prompts and image shapes only, so they are built on the host once
    def tokens(self, prompts: Sequence[str], image_shape: tuple, *, pairwise: bool,
               criteria: str | None = None) -> dict[str, np.ndarray]:
        """Token rows for a batch of prompts; ``image_shape`` is one image's [H, W, 3] or [T, H, W, 3]."""
        if not len(prompts):
            raise ValueError("no prompts to score")
        rows = [self._question(p, image_shape, pairwise, criteria) for p in prompts]
        limit = self.spec.max_prompt_tokens
        for i, row in enumerate(rows):
            if len(row.prompt_ids) > limit:
                raise T.TemplateError(
                    f"prompt {i} makes a {len(row.prompt_ids)}-token question (prompt, criteria and image "
                    f"tokens) but this RM's max_prompt_tokens is {limit}; pass max_prompt_tokens="
                    f"{len(row.prompt_ids)} or more to RewardModel.from_pretrained, or shorten the prompt")
        packed = T.pack(rows, limit, 0, self.vlm.tokenizer.pad_token_id,
                        (self.template.yes_id, self.template.no_id))
        return {"input_ids": packed.input_ids, "attention_mask": packed.attention_mask}

    def question_length(self, prompt: str, image_shape: tuple, *, pairwise: bool, criteria: str | None = None) -> int:
        """Tokens of the question ``tokens`` builds for ``prompt``; at most ``spec.max_prompt_tokens``
        fit."""
        return len(self._question(prompt, image_shape, pairwise, criteria).prompt_ids)

    def _question(self, prompt: str, image_shape: tuple, pairwise: bool, criteria: str | None):
        blank = self.spec.frames_of(np.zeros(image_shape, np.uint8))   # a clip: the frames it is seen by
        criteria = criteria or self.spec.criteria
        fmt = self.spec.eval_format()
        if pairwise:
            return self.builder.encode_pairwise(prompt, criteria, blank, blank, fmt)
        return self.builder.encode_pointwise(prompt, criteria, blank, fmt)

    def _reward(self, params, tokens, stream, tiles: int):
        net = nnx.merge(self.graphdef, params)
        pixels = to_pixels(stream, self.spec.image_size, tiles)
        hidden = net.hidden(tokens["input_ids"], pixels, tokens["attention_mask"])
        at_answer = hidden[:, self.spec.max_prompt_tokens - 1]
        if self.paradigm == "regressive":
            return net.score(at_answer)
        return losses.p_yes(net.logits(at_answer), self.template.yes_id, self.template.no_id, self.normalise)

    def pairwise_fn(self, params, tokens, references, images):
        """P("yes": image 2 beats image 1) with image 1 = reference. Images [B, H, W, 3] (or clips
        [B, T, H, W, 3]), uint8 or float in [0, 1]; differentiable in both."""
        references, images = self.spec.frames_of(references, 1), self.spec.frames_of(images, 1)
        frames = images.shape[-4] if images.ndim == 5 else 1
        stream = jnp.stack([references.astype(jnp.float32) / _scale(references),
                            images.astype(jnp.float32) / _scale(images)], axis=1)
        stream = stream.reshape(-1, *stream.shape[-3:])
        return self._reward(params, tokens, stream, 1 if frames > 1 else self.spec.max_tiles)

    def pointwise_fn(self, params, tokens, images):
        images = self.spec.frames_of(images, 1)
        frames = images.shape[-4] if images.ndim == 5 else 1
        stream = (images.astype(jnp.float32) / _scale(images)).reshape(-1, *images.shape[-3:])
        return self._reward(params, tokens, stream, 1 if frames > 1 else self.spec.max_tiles)

    @functools.cached_property
    def _pairwise_jit(self):
        return jax.jit(self.pairwise_fn)

    @functools.cached_property
    def _pointwise_jit(self):
        return jax.jit(self.pointwise_fn)

    def score_pairwise(self, reference_images, images, prompts: Sequence[str], criteria: str | None = None) -> np.ndarray:
        references, images = _check_images(reference_images, "reference_images"), _check_images(images, "images")
        if references.shape != images.shape or len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts, reference images {references.shape} and images "
                             f"{images.shape}: give one reference and one image of the same size per prompt")
        tokens = self.tokens(prompts, images.shape[1:], pairwise=True, criteria=criteria)
        return np.asarray(self._pairwise_jit(self.params, tokens, references, images))

    def score_pointwise(self, images, prompts: Sequence[str], criteria: str | None = None) -> np.ndarray:
        images = _check_images(images, "images")
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        tokens = self.tokens(prompts, images.shape[1:], pairwise=False, criteria=criteria)
        return np.asarray(self._pointwise_jit(self.params, tokens, images))

    def explain(self, reference_images, images, prompts: Sequence[str], criteria: str | None = None,
                max_new_tokens: int = 64) -> list[str]:
        """The model's verdict and reasons (decision first), by greedy generation."""
        references, images = _check_images(reference_images, "reference_images"), _check_images(images, "images")
        fmt = "decision_first"
        references, images = self.spec.frames_of(references, 1), self.spec.frames_of(images, 1)
        rows = [self.builder.encode_pairwise(p, criteria or self.spec.criteria, r, i, fmt)
                for p, r, i in zip(prompts, references, images)]
        packed = T.pack(rows, max(len(r.prompt_ids) for r in rows), 0,
                        self.vlm.tokenizer.pad_token_id, (self.template.yes_id, self.template.no_id))
        stream = np.stack([references, images], axis=1).reshape(-1, *images.shape[-3:])
        pixels = to_pixels(jnp.asarray(stream), self.spec.image_size, self.spec.max_tiles)
        out = self.vlm.generate(packed.input_ids, pixels, packed.attention_mask,
                                max_new_tokens=max_new_tokens, eos_token_id=self.template.end_ids,
                                pad_token_id=self.vlm.tokenizer.pad_token_id)
        return [self.vlm.tokenizer.decode(row, skip_special_tokens=True).strip() for row in np.asarray(out.tokens)]


# reward_config.json: every key it may hold and the kind of value (all optional).
SETTINGS = {
    "paradigm": (f"one of {', '.join(PARADIGMS)}", lambda v: v in PARADIGMS),
    "answer_format": (f"one of {', '.join(ANSWER_FORMATS)}", lambda v: v in ANSWER_FORMATS),
    "criteria": STRING, "normalise": BOOL, "max_prompt_tokens": POSITIVE_INT, "max_answer_tokens": POSITIVE_INT,
    "max_tiles": POSITIVE_INT,
    "video_frames": NON_NEGATIVE_INT,
    "video_sampling": (f"one of {', '.join(video.SAMPLINGS)}", lambda v: v in video.SAMPLINGS),
}


def read_settings(path: str, overrides: dict) -> dict:
    """An RM folder's reward_config.json (none in a plain InternVL folder: the defaults) with
    ``overrides`` on top; a bad key or value is a ConfigError naming the file (or argument)."""
    file = os.path.join(path, RM_CONFIG_FILE)
    settings = read_json(file) if os.path.exists(file) else {}
    check_settings(settings, file, "correct it there (or re-export the RM)")
    check_settings(overrides, "RewardModel.from_pretrained", "pass a valid value")
    return {**settings, **overrides}


def check_settings(settings, source: str, fix: str):
    section = Section(settings, source, fix=fix)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; rename or remove it (the "
                          f"settings are {', '.join(SETTINGS)})")
    for key, value in settings.items():
        section.check(key, value, SETTINGS[key])


def _scale(images) -> float:
    return 255.0 if images.dtype == jnp.uint8 else 1.0


def _check_images(images, name: str) -> np.ndarray | jax.Array:
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images])
    if images.ndim not in (4, 5) or images.shape[-1] != 3:
        raise ValueError(f"{name} must be [batch, H, W, 3] (or clips [batch, T, H, W, 3]), got {images.shape}")
    if not (images.dtype == np.uint8 or jnp.issubdtype(images.dtype, jnp.floating)):
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {images.dtype}")
    return images
