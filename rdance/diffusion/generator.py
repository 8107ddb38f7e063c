"""The generator interface that pretraining and fine-tuning use, and what every generator shares.

A generator is two things: a trainable nnx module (the parameters fine-tuning updates) and
frozen arrays (text encoders, VAE) that the jitted steps take as arguments. Everything else is
a pure function of those two, so the loops can jit, shard and differentiate it:

    tokens = gen.tokenize(prompts)                 # host: prompts -> integer arrays
    cond = gen.condition(model, frozen, tokens)    # text conditioning
    v = gen.velocity(model, cond)                  # v(x, t) for the sampler; t scalar or [B]
    images = gen.decode(frozen, latents)           # latents -> samples [B, *image_shape] float in [0, 1]
    latents = gen.encode(frozen, images)           # uint8 samples [B, *image_shape] -> latents

A sample is an image [H, W, 3] or a clip [F, H, W, 3] (``image_shape`` says which; the one
module that tells them apart is rdance.diffusion.samples): every array of samples has the batch
first and the pixels' (H, W, 3) last, so the loops treat both alike.

What the fine-tuning loop needs beyond the model itself is asked of the generator too, so no
loop branches on its kind: its built-in prompt split (``prompts``), caption-image pairs for the
pretraining anchor (``caption_images``) and an evaluator of held-out prompts (``heldout_evaluator``).

Implementations register an opener by kind (:func:`register_generator`) and
:func:`open_generator` opens a config's ``generator`` section, real or abstract (shapes only, no
weights read). :class:`rdance.diffusion.flux_generator.FluxGenerator` (a FLUX diffusers folder)
and :class:`rdance.diffusion.wan_generator.WanGenerator` (a Wan 2.1 WanPipeline folder) register
'flux' and 'wan' when ``rdance.diffusion`` is imported; the synthetic world's
:class:`rdance.world.generator.WorldGenerator` (a small pixel-space FLUX transformer) registers
'world' when ``rdance.world`` is imported, which its entrypoints do.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.diffusion import flow_match
from rdance.diffusion.sampler import Velocity, sample

T_SAMPLING = ("uniform", "logit_normal")


class Generator(Protocol):
    kind: str
    image_shape: tuple[int, ...]             # one decoded sample: an image [H, W, 3] or a clip [F, H, W, 3]
    latent_shape: tuple[int, ...]            # one sample's latents: FLUX packed [tokens, channels], Wan [C, T, h, w]
    schedule: flow_match.ScheduleConfig
    frozen: dict                             # frozen arrays on the mesh ({} when all of it trains)

    def make_model(self) -> nnx.Module:
        """The trainable module (random init); the loops only ever eval_shape it."""

    def initial_params(self, mesh, rules) -> dict | None:
        """Pretrained parameters of the trainable module on ``mesh`` (None: random init)."""

    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Prompts -> integer arrays [B, ...] (host side)."""

    def drop_captions(self, tokens: dict, key: jax.Array, ids: jax.Array) -> dict:
        """Pretraining's caption dropout on a batch of tokens (rows drawn by ``ids``), for losses
        that should train the empty caption as pretraining did; ``tokens`` unchanged where the
        generator has no such rate."""

    def condition(self, model, frozen, tokens) -> dict:
        """Text conditioning of a batch."""

    def velocity(self, model, cond, guided: bool = True) -> Velocity:
        """v(x, t) with x latents [B, *latent_shape] and t a noise level in [0, 1], scalar or per row; with
        guided=False, the plain velocity that flow-matching losses fit (no classifier-free guidance)."""

    def decode(self, frozen, latents) -> jax.Array:
        """Latents -> samples [B, *image_shape] float in [0, 1], differentiable."""

    def encode(self, frozen, images) -> jax.Array:
        """uint8 samples [B, *image_shape] -> latents (for flow-matching losses)."""

    def export(self, params, folder: str) -> str:
        """Write the generator with trainable parameters ``params`` to ``folder``."""

    def prompts(self, data) -> tuple[list[str], list]:
        """(training prompts, held-out prompts) when the config's ``data`` section names no prompt
        file (the world: its own prompt split; held-out items may be richer than strings, with a
        ``prompt`` attribute); raises when the generator has no prompts of its own."""

    def caption_images(self, length: int, seed: int) -> Sequence | None:
        """``length`` caption-image pairs for the anchor loss, or None (then anchor.path is needed)."""

    def heldout_evaluator(self, sampler, heldout: Sequence, samples_per_prompt: int):
        """``evaluate(trainable, frozen) -> (scalars, images)`` over the held-out prompts, or None."""


def sigmas(gen: Generator, num_steps: int) -> np.ndarray:
    """The generator's noise levels for ``num_steps`` Euler steps (shifted as it is configured; a
    resolution-dependent shift, FLUX's, reads the token count latent_shape[0], a static one not)."""
    return flow_match.sigmas(num_steps, gen.latent_shape[0], gen.schedule)


def per_sample_normal(key: jax.Array, ids: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """One Gaussian draw per id: row i gets normal(fold_in(key, ids[i])). The draw depends on the
    sample's id only, not on the batch it sits in, its micro-batch or the mesh."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(ids)


def per_sample_uniform(key: jax.Array, ids: jax.Array) -> jax.Array:
    """One uniform draw in (0, 1) per id, keyed like :func:`per_sample_normal`."""
    return jax.scipy.special.ndtr(per_sample_normal(key, ids, ()))


def sample_t(key: jax.Array, ids: jax.Array, how: str) -> jax.Array:
    """Training noise levels, one per id: uniform in (0, 1) or logit-normal (SD3's choice)."""
    if how not in T_SAMPLING:
        raise ValueError(f"t sampling {how!r}: use one of {T_SAMPLING}")
    if how == "logit_normal":
        return jax.nn.sigmoid(per_sample_normal(key, ids, ()))
    return per_sample_uniform(key, ids)   # the same normal draw, mapped to (0, 1)


def flow_matching_loss(gen: Generator, model, cond: dict, x0: jax.Array, key: jax.Array, ids: jax.Array,
                       t_sampling: str = "uniform") -> jax.Array:
    """Per-sample rectified-flow loss ||v(x_t, t) - (noise - x0)||^2 with x_t = (1-t) x0 + t noise."""
    x0 = x0.astype(jnp.float32)
    t = sample_t(jax.random.fold_in(key, 0), ids, t_sampling)
    noise = per_sample_normal(jax.random.fold_in(key, 1), ids, x0.shape[1:])
    tb = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    x_t = (1 - tb) * x0 + tb * noise
    v = gen.velocity(model, cond, guided=False)(x_t, t).astype(jnp.float32)
    return jnp.mean(jnp.square(v - (noise - x0)), axis=tuple(range(1, x0.ndim)))


def generate(gen: Generator, model, frozen, tokens, noise: jax.Array, sigma_values) -> jax.Array:
    """Sample with ``len(sigma_values) - 1`` Euler steps and decode: samples [B, *image_shape] in [0, 1]."""
    cond = gen.condition(model, frozen, tokens)
    return gen.decode(frozen, sample(gen.velocity(model, cond), noise, sigma_values))


def to_uint8(images) -> np.ndarray:
    """Float images (or clips) in [0, 1] -> uint8 on the host."""
    return np.asarray(np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255), np.uint8)


Opener = Callable[..., Generator]   # opener(cfg, mesh, rules, abstract=False) -> Generator
_OPENERS: dict[str, Opener] = {}


def register_generator(kind: str, opener: Opener) -> None:
    """Make ``open_generator`` open config sections of ``kind`` with ``opener(cfg, mesh, rules,
    abstract)``; abstract: shapes only, no weights read (the fit check)."""
    _OPENERS[kind] = opener


def open_generator(cfg: Any, mesh, rules, abstract: bool = False) -> Generator:
    """Open the generator a config's ``generator`` section names by its ``kind``."""
    if cfg.kind not in _OPENERS:
        raise ValueError(f"generator.kind={cfg.kind!r}: the registered kinds are {sorted(_OPENERS)} "
                         "(import rdance.world to register 'world')")
    return _OPENERS[cfg.kind](cfg, mesh, rules, abstract=abstract)
