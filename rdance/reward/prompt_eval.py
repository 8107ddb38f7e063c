"""Scoring a generator's samples of a prompt set: what ``rdance.run.evaluate`` and the fine-tuning
loop's prompt-file eval (rdance.train.prompt_eval) share, so the two give the same numbers for
the same parameters and noise.

* :func:`sample_grid`: every sample of every prompt, drawn call by call. Sample k of prompt p is
  row p - start of the call for the ``batch_size`` prompts starting at ``start``, with seed
  ``seed + k * 1_000_003 + start`` (its noise: ``per_sample_normal(key(that seed), row)``, as
  rdance.diffusion.search.Searcher draws it for plain sampling).
* :func:`score_samples`: a pointwise or regressive reward model's score of each sample for each
  criteria, and a CLIP scorer's, as arrays [P, K] named ``rm/<criteria>`` and ``clip_score``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

SEED_STRIDE = 1_000_003   # between sample k and k + 1 of the same prompt


def sample_grid(num_prompts: int, samples_per_prompt: int, batch_size: int, seed: int,
                draw: Callable[[int, int, int], np.ndarray]) -> np.ndarray:
    """[P, K, ...]: ``draw(start, stop, call_seed)`` gives sample k of prompts start..stop-1, with
    call_seed = seed + k * SEED_STRIDE + start."""
    chunks = []
    for start in range(0, num_prompts, batch_size):
        stop = min(start + batch_size, num_prompts)
        chunks.append(np.stack([draw(start, stop, seed + k * SEED_STRIDE + start)
                                for k in range(samples_per_prompt)], axis=1))
    return np.concatenate(chunks)


def score_samples(images: np.ndarray, prompts: Sequence[str], rm=None, criteria: Sequence[str] = (),
                  clip=None) -> dict[str, np.ndarray]:
    """uint8 images [P, K, H, W, 3] of ``prompts`` -> {"rm/<criteria>": [P, K], "clip_score": [P, K]}
    (the RM's rows when ``rm`` is given, a pointwise or regressive RewardModel; the CLIP row when
    ``clip`` is, a rdance.reward.clip_score.CLIPScorer)."""
    images = np.asarray(images)
    p, k = images.shape[:2]
    if p != len(prompts):
        raise ValueError(f"{p} rows of images for {len(prompts)} prompts")
    flat = images.reshape(p * k, *images.shape[2:])
    repeated = [prompt for prompt in prompts for _ in range(k)]   # one per sample, prompt-major
    out = {}
    if rm is not None:
        if rm.paradigm == "pairwise":
            raise ValueError("a pairwise reward model compares two images; score samples alone with a pointwise "
                             "or regressive one")
        for c in criteria:
            out[f"rm/{c}"] = np.asarray(rm.score_pointwise(flat, repeated, criteria=c), np.float64).reshape(p, k)
    if clip is not None:
        out["clip_score"] = np.asarray(clip.score(flat, repeated), np.float64).reshape(p, k)
    return out
