"""Sampling a generator for fixed prompts on the mesh, and the synthetic world's judge over them.

:class:`Sampler` generates images for host-side token rows in fixed-size chunks (one compile),
with each sample's noise keyed by (seed, sample id) so the same id always gives the same image
from the same parameters. :class:`JudgeEval` samples held-out world prompts and reports the
programmatic judge's mean alignment, overall and per prompt kind: the number that fine-tuning
is meant to raise and that no model was trained on, and which kinds of check it passes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.world.judge import check_rates, judge
from rdance.world.prompts import Scene
from rdance.diffusion import generator as genlib
from rdance.train.host import to_host


def place(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array (the same on every process) as a global array split over the batch axes."""
    x = np.asarray(x)
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES, *([None] * (x.ndim - 1))))
    return jax.make_array_from_callback(x.shape, spec, lambda index: x[index])


class Sampler:
    """``sampler(trainable, frozen, tokens, ids, seed=None) -> uint8 [M, H, W, 3]``; sample i's
    noise is keyed by (seed, ids[i]), ``seed`` defaulting to the sampler's.

    ``effective(trainable, frozen)`` gives the generator's full parameters (identity for full
    fine-tuning, the LoRA merge otherwise). ``chunk`` rows go through one compiled call; it must
    split over the mesh's batch axes.
    """

    def __init__(self, gen: genlib.Generator, graphdef, mesh: Mesh, num_steps: int, chunk: int,
                 seed: int, effective: Callable = lambda trainable, frozen: trainable):
        ways = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
        if chunk % ways:
            raise ValueError(f"sampling chunk {chunk} does not split over the {ways} data-parallel devices")
        self.gen, self.mesh, self.chunk = gen, mesh, chunk
        self.seed = seed
        sigma_values = jnp.asarray(genlib.sigmas(gen, num_steps))

        def run(trainable, frozen, tokens, ids, seed):
            model = nnx.merge(graphdef, effective(trainable, frozen))
            noise = genlib.per_sample_normal(jax.random.key(seed), ids, gen.latent_shape)
            noise = jax.lax.with_sharding_constraint(noise, NamedSharding(mesh, P(sharding.BATCH_AXES, None, None)))
            return genlib.generate(gen, model, frozen, tokens, noise, sigma_values)

        self._run = jax.jit(run, out_shardings=NamedSharding(mesh, P(sharding.BATCH_AXES, None, None, None)))

    def __call__(self, trainable, frozen, tokens: dict, ids: Sequence[int], seed: int | None = None) -> np.ndarray:
        seed = np.int32(self.seed if seed is None else seed)
        ids = np.asarray(ids, np.int32)
        total = len(ids)
        pad = -total % self.chunk
        tokens = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in tokens.items()}
        ids = np.concatenate([ids, np.repeat(ids[-1:], pad)])
        out = []
        for start in range(0, len(ids), self.chunk):
            sl = slice(start, start + self.chunk)
            images = self._run(trainable, frozen, {k: place(v[sl], self.mesh) for k, v in tokens.items()},
                               place(ids[sl], self.mesh), seed)
            out.append(genlib.to_uint8(to_host(images)))
        return np.concatenate(out)[:total]


def judge_scores(images: np.ndarray, scenes: Sequence[Scene]) -> np.ndarray:
    return judge_with_checks(images, scenes)[0]


def judge_with_checks(images: np.ndarray, scenes: Sequence[Scene]) -> tuple[np.ndarray, dict[str, float]]:
    """Each image's judge score, and the pass rate of each kind of check over all of them."""
    verdicts = [judge(image, scene) for image, scene in zip(images, scenes)]
    return np.asarray([v.score for v in verdicts], np.float32), check_rates(verdicts)


class JudgeEval:
    """Mean judge alignment over held-out scenes, ``samples_per_prompt`` samples each, with fixed
    noise: sample s of scene p has id ``s * P + p`` (as in rdance.run.judge_generators), so sample 0
    is the same whatever the count."""

    def __init__(self, sampler: Sampler, gen: genlib.Generator, scenes: Sequence[Scene], samples_per_prompt: int = 1):
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt is {samples_per_prompt}; judge at least one sample per prompt")
        self.sampler, self.scenes, self.samples = sampler, list(scenes) * samples_per_prompt, samples_per_prompt
        self.tokens = gen.tokenize([s.prompt for s in self.scenes])

    def __call__(self, trainable, frozen) -> tuple[dict[str, float], np.ndarray]:
        """({"judge": mean, "judge/KIND": mean per prompt kind, "check/NAME": check_rates}, images
        [samples_per_prompt * P, H, W, 3])."""
        images = self.sampler(trainable, frozen, self.tokens, np.arange(len(self.scenes)))
        scores, checks = judge_with_checks(images, self.scenes)
        out = {"judge": float(scores.mean())}
        kinds = np.asarray([s.kind for s in self.scenes])
        for kind in sorted(set(kinds)):
            out[f"judge/{kind}"] = float(scores[kinds == kind].mean())
        out.update({f"check/{name}": rate for name, rate in checks.items()})
        return out, images
