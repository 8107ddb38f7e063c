"""Prompts to FLUX's text conditioning: T5 per-token features and the pooled CLIP vector.

Tokenisation happens on the host with the checkpoint's own tokenizers (transformers classes,
imported when loading); both encoders run as jitted pure functions of their split state.
"""
from __future__ import annotations

import logging
from typing import Sequence

import jax
import numpy as np
from flax import nnx

OVERFLOW_POLICIES = ("warn", "error")


def check_prompts(prompts) -> list[str]:
    """A non-empty list of strings, or a clear error before any model runs."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("empty prompt list: pass at least one prompt")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings; entries {bad[:5]} are not")
    return prompts


def _jit_apply(module: nnx.Module):
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    return lambda ids: fn(state, ids)


class TextEncoders:
    """CLIP (pooled) + T5 (per token), with their tokenizers."""

    def __init__(self, clip, t5, clip_tokenizer, t5_tokenizer):
        self.clip, self.t5 = clip, t5
        self.clip_tokenizer, self.t5_tokenizer = clip_tokenizer, t5_tokenizer
        self._clip, self._t5 = _jit_apply(clip), _jit_apply(t5)

    def tokenize_t5(self, prompts: Sequence[str], max_sequence_length: int, on_overflow: str) -> np.ndarray:
        if on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
        lengths = [len(ids) for ids in self.t5_tokenizer(list(prompts)).input_ids]
        long = [(i, n) for i, n in enumerate(lengths) if n > max_sequence_length]
        if long:
            message = (f"{len(long)} prompt(s) exceed the T5 limit of {max_sequence_length} tokens "
                       f"(prompt index, tokens): {long[:5]}")
            if on_overflow == "error":
                raise ValueError(message + "; shorten them or pass on_overflow='warn' to truncate")
            logging.warning("%s; truncating", message)
        return np.asarray(self.t5_tokenizer(list(prompts), padding="max_length", max_length=max_sequence_length,
                                            truncation=True).input_ids, np.int32)

    def tokenize_clip(self, prompts: Sequence[str]) -> np.ndarray:
        limit = self.clip_tokenizer.model_max_length
        out = self.clip_tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=True)
        full = self.clip_tokenizer(list(prompts)).input_ids
        if any(len(ids) > limit for ids in full):
            # FLUX's pipeline always truncates CLIP at 77 tokens; T5 carries the long prompt.
            logging.warning("prompt(s) truncated to CLIP's %d tokens for the pooled embedding", limit)
        return np.asarray(out.input_ids, np.int32)

    def encode(self, prompts, *, max_sequence_length: int = 512, on_overflow: str = "warn"):
        """prompts -> (prompt_embeds [B, max_sequence_length, D_t5], pooled [B, D_clip])."""
        prompts = check_prompts(prompts)
        if not 0 < max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be in 1..512 (FLUX's T5 limit), got {max_sequence_length}")
        t5_ids = self.tokenize_t5(prompts, max_sequence_length, on_overflow)
        _, pooled = self._clip(self.tokenize_clip(prompts))
        return self._t5(t5_ids), pooled
