"""Inference-time scaling: spend more sampling compute per prompt and let a verifier choose.

Two searches over any :class:`rdance.diffusion.generator.Generator`, after Ma et al. 2025
("Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps", arXiv 2501.09732):

* **Best-of-N**: N noises per prompt, each sampled to the end; the verifier keeps the best.
* **Search over paths**: N paths per prompt are sampled down to ``start_step``. Then, round after
  round, each path branches into M candidates: re-noised ``forward_steps`` grid steps back up the
  noise schedule with fresh noise (x at sigma_i -> sigma_j > sigma_i keeps the same x0 marginal:
  x_j = a x_i + sqrt(sigma_j^2 - a^2 sigma_i^2) eps, a = (1 - sigma_j) / (1 - sigma_i)) and
  denoised ``backward_steps`` grid steps down (backward > forward, so each round progresses).
  The verifier scores every candidate's decoded x0 estimate and the best N per prompt go on;
  at sigma = 0 the best one is the answer.

A verifier is any host callable ``verifier(images uint8 [K, H, W, 3], prompt_index [K]) ->
scores [K]`` (higher is better): a pointwise or regressive reward model, a pairwise one against a
running best (:class:`PairwiseAgainstBest`), or on the synthetic world the judge as an oracle.

Compute is counted as generator function evaluations (NFE, one velocity call on one sample) and
verifier calls (images scored); ``sampling_units`` = NFE per prompt / num_steps, so plain
sampling is 1x. Denoising from any grid step to any other is one compiled function per row count
(the step range is data), so a search compiles twice (N and N*M rows per prompt).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.diffusion import generator as genlib
from rdance.diffusion.sampler import euler_step

METHODS = ("none", "best_of_n", "paths")
Verifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    method: str = "none"
    n: int = 4                 # best_of_n: candidates per prompt; paths: paths kept per prompt
    m: int = 2                 # paths: candidates each path branches into per round
    start_step: int = 0        # paths: grid step of the first branching (0: half of num_steps)
    forward_steps: int = 1     # paths: re-noise this many grid steps up the schedule
    backward_steps: int = 2    # paths: then denoise this many steps down (> forward_steps)

    def check(self, num_steps: int) -> None:
        """Raise ValueError naming the setting and its bound."""
        if self.method not in METHODS:
            raise ValueError(f"search method {self.method!r}: use one of {METHODS}")
        if self.method == "none":
            return
        if self.n < 1:
            raise ValueError(f"search n={self.n}: keep at least one candidate per prompt")
        if self.method == "paths":
            if self.m < 1:
                raise ValueError(f"search m={self.m}: each path needs at least one candidate per round")
            if not 1 <= self.forward_steps < self.backward_steps:
                raise ValueError(f"search forward_steps={self.forward_steps}, backward_steps={self.backward_steps}: "
                                 "need 1 <= forward_steps < backward_steps, or the search never reaches sigma 0")
            start = self.first_branch(num_steps)
            if not self.forward_steps <= start < num_steps:
                raise ValueError(f"search start_step={start}: must be in [forward_steps={self.forward_steps}, "
                                 f"num_steps={num_steps}) (the re-noised step must exist)")

    def first_branch(self, num_steps: int) -> int:
        return self.start_step or num_steps // 2

    def nfe_per_prompt(self, num_steps: int) -> int:
        """The generator evaluations a search of this setting spends per prompt (plan a budget)."""
        if self.method == "none":
            return num_steps
        if self.method == "best_of_n":
            return self.n * num_steps
        at = self.first_branch(num_steps)
        nfe = self.n * at
        while at < num_steps:
            up = at - self.forward_steps
            at = min(up + self.backward_steps, num_steps)
            nfe += self.n * self.m * (at - up)
        return nfe


@dataclasses.dataclass
class SearchResult:
    images: np.ndarray          # uint8 [P, H, W, 3]: the chosen sample of each prompt
    scores: np.ndarray          # [P]: the verifier's score of it (nan without a verifier)
    nfe_per_prompt: int         # generator function evaluations per prompt
    verifier_images: int        # images the verifier scored, all prompts
    rounds: int                 # verifier calls
    wall_s: float
    num_steps: int

    @property
    def sampling_units(self) -> float:
        """Generator compute per prompt against plain sampling (1.0)."""
        return self.nfe_per_prompt / self.num_steps

    def report(self) -> dict:
        return dict(nfe_per_prompt=self.nfe_per_prompt, sampling_units=self.sampling_units,
                    verifier_images=self.verifier_images, verifier_calls=self.rounds, wall_s=round(self.wall_s, 3))


def renoise(x: jax.Array, sigma_from, sigma_to, noise: jax.Array) -> jax.Array:
    """Latents at ``sigma_from`` moved up to ``sigma_to`` >= sigma_from along the forward process
    of x_t = (1 - t) x0 + t eps, so x0's marginal is unchanged."""
    a = (1.0 - sigma_to) / (1.0 - sigma_from)
    extra = jnp.sqrt(jnp.maximum(sigma_to ** 2 - (a * sigma_from) ** 2, 0.0))
    return (a * x.astype(jnp.float32) + extra * noise).astype(x.dtype)


_renoise = jax.jit(renoise)


def _compiled_denoise(gen: genlib.Generator, graphdef, sigmas: np.ndarray):
    """``denoise(trainable, frozen, tokens, x, start, stop)``: Euler steps start..stop-1 over
    ``sigmas``, giving (x at stop, the decoded x0 estimate of the last step)."""
    sig = jnp.asarray(sigmas, jnp.float32)

    def denoise(trainable, frozen, tokens, x, start, stop):
        model = nnx.merge(graphdef, trainable)
        velocity = gen.velocity(model, gen.condition(model, frozen, tokens))

        def body(i, carry):
            return euler_step(velocity, carry[0], sig[i], sig[i + 1])
        x, x0 = jax.lax.fori_loop(start, stop, body, (x, jnp.zeros_like(x)))
        return x, gen.decode(frozen, x0)
    return jax.jit(denoise)


class Searcher:
    """``searcher(trainable, frozen, prompts, verifier, seed, config=None) -> SearchResult``.

    ``graphdef`` with ``trainable`` makes the generator's module (as the loops' Sampler does);
    with a ``mesh``, candidate rows are split over its batch axes when their count divides. A call
    may pass its own ``config`` (a sweep over N): every call shares the compiled denoiser."""

    def __init__(self, gen: genlib.Generator, graphdef, num_steps: int, config: SearchConfig = SearchConfig(),
                 mesh: Mesh | None = None):
        config.check(num_steps)
        self.gen, self.cfg, self.num_steps, self.mesh = gen, config, num_steps, mesh
        self.sigmas = np.asarray(genlib.sigmas(gen, num_steps), np.float32)
        self._denoise = _compiled_denoise(gen, graphdef, self.sigmas)
        self._renoise = _renoise

    # ----- helpers
    def _rows(self, x: np.ndarray):
        if self.mesh is None:
            return jnp.asarray(x)
        ways = int(np.prod([self.mesh.shape[a] for a in sharding.BATCH_AXES]))
        spec = P(sharding.BATCH_AXES) if len(x) % ways == 0 else P()
        return jax.device_put(x, NamedSharding(self.mesh, P(*spec, *([None] * (np.ndim(x) - 1)))))

    def _run(self, trainable, frozen, tokens, prompt_of, x, start, stop):
        rows = {k: self._rows(v[prompt_of]) for k, v in tokens.items()}
        x, images = self._denoise(trainable, frozen, rows, self._rows(np.asarray(x)), np.int32(start), np.int32(stop))
        self.nfe += len(prompt_of) * (stop - start)
        return x, genlib.to_uint8(jax.device_get(images))

    def _score(self, verifier: Verifier, images: np.ndarray, prompt_of: np.ndarray) -> np.ndarray:
        scores = np.asarray(verifier(images, prompt_of), np.float64)
        if scores.shape != (len(images),) or not np.all(np.isfinite(scores)):
            raise ValueError(f"the verifier returned {scores.shape} scores (finite: {np.isfinite(scores).all()}) "
                             f"for {len(images)} images: it must give one finite score per image")
        self.verifier_images += len(images)
        self.rounds += 1
        return scores

    @staticmethod
    def _best_per_prompt(scores: np.ndarray, prompts: int, keep: int) -> np.ndarray:
        """Row indices of the ``keep`` best candidates of each prompt (rows are prompt-major)."""
        per = scores.reshape(prompts, -1)
        order = np.argsort(-per, axis=1, kind="stable")[:, :keep]
        return (order + np.arange(prompts)[:, None] * per.shape[1]).reshape(-1)

    # ----- the search
    def __call__(self, trainable, frozen, prompts: Sequence[str], verifier: Verifier | None = None,
                 seed: int = 0, config: SearchConfig | None = None) -> SearchResult:
        cfg, steps = config or self.cfg, self.num_steps
        cfg.check(steps)
        if cfg.method != "none" and verifier is None:
            raise ValueError(f"search method {cfg.method!r} needs a verifier")
        self.nfe, self.verifier_images, self.rounds = 0, 0, 0
        started = time.time()
        tokens = self.gen.tokenize(list(prompts))
        p = len(prompts)
        n = 1 if cfg.method == "none" else cfg.n
        key = jax.random.key(seed)
        prompt_of = np.repeat(np.arange(p), n)              # row r = prompt r // n, path r % n
        noise = genlib.per_sample_normal(key, jnp.arange(p * n), self.gen.latent_shape)
        if cfg.method in ("none", "best_of_n"):
            _, images = self._run(trainable, frozen, tokens, prompt_of, noise, 0, steps)
            scores = self._score(verifier, images, prompt_of) if verifier else np.full(p * n, np.nan)
            best = np.arange(p) * n if verifier is None else self._best_per_prompt(scores, p, 1)
            return SearchResult(images[best], scores[best], self.nfe // p, self.verifier_images, self.rounds,
                                time.time() - started, steps)

        at = cfg.first_branch(steps)
        x, _ = self._run(trainable, frozen, tokens, prompt_of, noise, 0, at)
        branch_of = np.repeat(np.arange(p * n), cfg.m)     # candidate row -> the path it came from
        round_ = 0
        while at < steps:
            up = at - cfg.forward_steps
            down = min(up + cfg.backward_steps, steps)
            fresh = genlib.per_sample_normal(jax.random.fold_in(key, 1 + round_), jnp.arange(len(branch_of)),
                                             self.gen.latent_shape)
            candidates = self._renoise(jnp.asarray(x)[branch_of], self.sigmas[at], self.sigmas[up], fresh)
            x_all, images = self._run(trainable, frozen, tokens, prompt_of[branch_of], candidates, up, down)
            scores = self._score(verifier, images, prompt_of[branch_of])
            keep = self._best_per_prompt(scores, p, n)       # prompt-major, n per prompt
            x = jnp.asarray(x_all)[keep]
            at, round_ = down, round_ + 1
        final = keep.reshape(p, n)[:, 0]                    # best of the last round
        return SearchResult(images[final], scores[final], self.nfe // p, self.verifier_images, self.rounds,
                            time.time() - started, steps)


class PairwiseAgainstBest:
    """A pairwise verifier as a pointwise one: each candidate's P(it beats the prompt's running
    best). The running best starts as the first candidate of a prompt and becomes a candidate
    that beats it (score > 0.5, the highest of the call).

    ``score_pairwise(references, images, prompts)`` is e.g. RewardModel.score_pairwise."""

    def __init__(self, score_pairwise: Callable, prompts: Sequence[str]):
        self.score_pairwise, self.prompts = score_pairwise, list(prompts)
        self.best: dict[int, np.ndarray] = {}

    def __call__(self, images: np.ndarray, prompt_of: np.ndarray) -> np.ndarray:
        for row, p in enumerate(prompt_of):
            self.best.setdefault(int(p), images[row])
        references = np.stack([self.best[int(p)] for p in prompt_of])
        scores = np.asarray(self.score_pairwise(references, images, [self.prompts[int(p)] for p in prompt_of]))
        for p in set(int(q) for q in prompt_of):
            rows = np.flatnonzero(prompt_of == p)
            top = rows[np.argmax(scores[rows])]
            if scores[top] > 0.5:
                self.best[p] = images[top]
        return scores


def pointwise_verifier(score_pointwise: Callable, prompts: Sequence[str], **kwargs) -> Verifier:
    """``score_pointwise(images, prompts, **kwargs)`` (RewardModel.score_pointwise, a regressive
    RM's score) as a verifier over row prompt indices."""
    prompts = list(prompts)
    return lambda images, prompt_of: np.asarray(score_pointwise(images, [prompts[int(p)] for p in prompt_of], **kwargs))
