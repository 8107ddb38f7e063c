"""Sampling a generator for fixed prompts on the mesh.

:class:`Sampler` generates images for host-side token rows in fixed-size chunks (one compile),
with each sample's noise keyed by (seed, sample id) so the same id always gives the same image
from the same parameters. What a generator's held-out samples are scored by is the generator's
own ``heldout_evaluator`` (the synthetic world's judge: rdance.world.evaluate.JudgeEval).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.diffusion import generator as genlib
from rdance.train.host import to_host


def place(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array (the same on every process) as a global array split over the batch axes."""
    x = np.asarray(x)
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES, *([None] * (x.ndim - 1))))
    return jax.make_array_from_callback(x.shape, spec, lambda index: x[index])


class Sampler:
    """``sampler(trainable, frozen, tokens, ids, seed=None) -> uint8 [M, *gen.image_shape]``; sample i's
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
        by_batch = lambda ndim: NamedSharding(mesh, P(sharding.BATCH_AXES, *([None] * (ndim - 1))))  # noqa: E731

        def run(trainable, frozen, tokens, ids, seed):
            model = nnx.merge(graphdef, effective(trainable, frozen))
            noise = genlib.per_sample_normal(jax.random.key(seed), ids, gen.latent_shape)
            noise = jax.lax.with_sharding_constraint(noise, by_batch(1 + len(gen.latent_shape)))
            return genlib.generate(gen, model, frozen, tokens, noise, sigma_values)

        self._run = jax.jit(run, out_shardings=by_batch(1 + len(gen.image_shape)))

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
