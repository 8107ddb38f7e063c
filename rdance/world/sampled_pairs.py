"""Preference pairs over a generator's own samples, labelled by the synthetic world's judge.

RewardDance's reward models learn from people comparing images that generators made. In the
synthetic world the judge stands in for the raters: for random prompts it scores several
samples of the pretrained generator, and two samples of one prompt with different scores become
a pair whose label is the better one. Optionally, rendered pairs from rdance.world.pairs (a
faithful render against near misses) are mixed in. The output is the JSONL + PNG layout of
rdance.data.records, so ``python -m rdance.run.train_reward --config.data.train=.../train.jsonl``
trains a reward model on it.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from rdance.world.pairs import ALIGNMENT_CRITERIA, PreferencePairs
from rdance.world.prompts import sample_scene
from rdance.train.generator_eval import Sampler
from rdance.world.evaluate import judge_scores


def _save(folder: str, name: str, image: np.ndarray) -> str:
    from PIL import Image
    Image.fromarray(image).save(os.path.join(folder, name))
    return name


def write_pairs(path: str, sampler: Sampler, params, gen, *, num_prompts: int, samples_per_prompt: int,
                pairs_per_prompt: int, rendered_pairs: int, seed: int) -> dict:
    """Write ``path`` (a .jsonl next to its PNGs); returns counts for the log."""
    folder = os.path.dirname(os.path.abspath(path))
    images_dir = os.path.join(folder, os.path.splitext(os.path.basename(path))[0])
    os.makedirs(images_dir, exist_ok=True)
    rel = os.path.basename(images_dir)
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(num_prompts)]
    g = samples_per_prompt
    records, ties, scores = [], 0, np.zeros((0,))
    if scenes:
        tokens = gen.tokenize([s.prompt for s in scenes for _ in range(g)])
        images = sampler(params, gen.frozen, tokens, np.arange(num_prompts * g), seed)
        scores = judge_scores(images, [s for s in scenes for _ in range(g)]).reshape(num_prompts, g)
        images = images.reshape(num_prompts, g, *images.shape[1:])
    for p, scene in enumerate(scenes):
        candidates = [(i, j) for i in range(g) for j in range(i + 1, g) if scores[p, i] != scores[p, j]]
        ties += len(candidates) == 0
        for n in rng.permutation(len(candidates))[:pairs_per_prompt]:
            i, j = candidates[n]
            names = [_save(images_dir, f"s{p}_{k}.png", images[p, k]) for k in (i, j)]
            records.append({"prompt": scene.prompt, "images": [f"{rel}/{x}" for x in names],
                            "label": int(scores[p, j] > scores[p, i]), "criteria": ALIGNMENT_CRITERIA})
    sampled = len(records)
    rendered = PreferencePairs(rendered_pairs, seed=seed + 1, size=gen.image_shape[0])
    for n in range(rendered_pairs):
        record = rendered[n]
        names = [_save(images_dir, f"r{n}_{k}.png", image) for k, image in enumerate(record.images)]
        records.append({"prompt": record.prompt, "images": [f"{rel}/{x}" for x in names],
                        "label": record.label, "criteria": record.criteria, "rationale": record.rationale})
    order = rng.permutation(len(records))
    with open(path, "w") as f:
        for n in order:
            f.write(json.dumps(records[n]) + "\n")
    counts = {"sample_pairs": sampled, "rendered_pairs": rendered_pairs, "prompts_all_tied": ties,
              "mean_judge": float(scores.mean()) if scores.size else float("nan")}
    logging.info("wrote %s: %s", path, counts)
    return counts
