"""Training the world generator's VAE: a small ``AutoencoderKL`` of the FLUX VAE's architecture
(rdance.models.flux.vae at the widths of ``model.vae_channels``) on rendered world scenes.

The loss is FLUX-VAE-like without the adversary: reconstruction of a latent sample (L1 + MSE),
an edge term (L1 between the images' horizontal and vertical differences, so that corners and
straight edges survive: the judge names a rounded blob "circle") and a small KL to the unit
Gaussian. After training, the latents' mean and standard deviation over rendered scenes give the
shift and scale that map them to unit variance for the transformer (FLUX's shift_factor and
scaling_factor). The gate that matters is :func:`reconstruction_judge`: the programmatic judge on
the VAE's reconstructions of held-out renders, the ceiling of any generator built on it.

Config section ``vae`` (experiments/gen_smoke.py): ``steps``, ``batch_size``, ``learning_rate``
(Adam, cosine decay after ``warmup_steps``), ``kl_weight``, ``edge_weight``, ``seed`` (data and
init), ``log_every``, ``eval_prompts`` (held-out scenes whose renders the gate reconstructs).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from rdance.models.flux.vae import AutoencoderKL
from rdance.world.captions import RenderedCaptions, world_prompt_split
from rdance.world.evaluate import judge_with_checks
from rdance.world.render import render

STATS_FILE = "vae_stats.json"


def to_unit_range(images) -> jax.Array:
    """uint8 NHWC -> float NCHW in [-1, 1] (what AutoencoderKL takes)."""
    return jnp.transpose(jnp.asarray(images, jnp.float32) / 127.5 - 1.0, (0, 3, 1, 2))


def edges(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Differences of neighbouring pixels along height and width (the last two axes: NCHW
    images, NCTHW clips)."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., 1:] - x[..., :-1]


def chroma(x: jax.Array) -> jax.Array:
    """Two colour-opponent channels, R - G and G - B, of images or clips (channels on axis 1):
    where the world's green and blue differ (by G - B) and its red and yellow (by R - G)."""
    return jnp.stack([x[:, 0] - x[:, 1], x[:, 1] - x[:, 2]], axis=1)


def vae_loss(vae, x: jax.Array, key: jax.Array, kl_weight: float, edge_weight: float, sample: bool = True,
             decode_kwargs: dict | None = None, colour_weight: float = 0.0):
    """(loss, metrics) of images ``x`` (NCHW in [-1, 1]; or clips, NCTHW, for the Wan VAE)
    reconstructed from a latent sample (``sample=False``: from the posterior mean); ``vae`` has
    ``encode -> (mean, logvar)`` and ``decode(z, **decode_kwargs)``. ``colour_weight`` weighs an
    L1 on the :func:`chroma` channels: the world video VAE drew green and blue as one teal under
    the plain loss (bench/results/video_refl.md)."""
    mean, logvar = vae.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype) if sample else mean
    rec = vae.decode(z, **(decode_kwargs or {})).astype(jnp.float32)
    l1, mse = jnp.mean(jnp.abs(rec - x)), jnp.mean(jnp.square(rec - x))
    edge = sum(jnp.mean(jnp.abs(a - b)) for a, b in zip(edges(rec), edges(x)))
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    colour = jnp.mean(jnp.abs(chroma(rec) - chroma(x)))
    loss = l1 + mse + edge_weight * edge + kl_weight * kl + colour_weight * colour
    return loss, {"l1": l1, "mse": mse, "edge": edge, "kl": kl, "colour": colour}


def make_train_step(graphdef, tx, kl_weight: float, edge_weight: float, to_unit=to_unit_range,
                    sample: bool = True, decode_kwargs: dict | None = None, colour_weight: float = 0.0) -> Callable:
    """step(params, opt_state, uint8 batch, key) -> (params, opt_state, loss, metrics), jitted;
    ``to_unit`` maps the batch (images NHWC by default) to the VAE's input in [-1, 1]; the rest
    as :func:`vae_loss`."""
    def step(params, opt_state, images, key):
        def loss_fn(p):
            return vae_loss(nnx.merge(graphdef, p), to_unit(images), key, kl_weight, edge_weight, sample,
                            decode_kwargs, colour_weight)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics
    return jax.jit(step)


def batches(source: RenderedCaptions, batch_size: int, start: int = 0):
    """Endless uint8 image batches of ``source``'s renders, in order from example ``start``."""
    i = start
    while True:
        yield np.stack([source[(i + j) % len(source)][1] for j in range(batch_size)])
        i += batch_size


def latent_stats(gen, vae_params, images: np.ndarray) -> tuple[float, float]:
    """(shift, scale) that map the VAE's posterior means of ``images`` to mean 0, variance 1."""
    vae = nnx.merge(gen.vae_def, vae_params)
    mean = jax.jit(lambda x: vae.encode(to_unit_range(x))[0])(images)
    return float(jnp.mean(mean)), float(1.0 / (jnp.std(mean) + 1e-6))


def reconstruction_judge(gen, eval_prompts: int, prompt_seed: int = 7, chunk: int = 64) -> dict[str, float]:
    """The judge on the VAE's reconstructions (through the scaled latents, as sampling decodes) of
    renders of ``eval_prompts`` held-out scenes: ``recon/judge``, ``recon/check/*``, ``recon/mae``."""
    _, scenes = world_prompt_split(prompt_seed, 0, eval_prompts)
    size = gen.cfg.image_size
    renders = np.stack([render(s, size, np.random.default_rng([prompt_seed, i])) for i, s in enumerate(scenes)])
    roundtrip = jax.jit(lambda x: gen.decode(gen.frozen, gen.encode(gen.frozen, x)))
    images = np.concatenate([np.asarray(roundtrip(renders[i:i + chunk])) for i in range(0, len(renders), chunk)])
    images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    scores, checks = judge_with_checks(images, scenes)
    out = {"recon/judge": float(scores.mean()),
           "recon/mae": float(np.abs(images.astype(np.float32) - renders.astype(np.float32)).mean() / 255.0)}
    out.update({f"recon/check/{k}": v for k, v in checks.items()})
    return out


def fit_vae(vae, c, data, to_unit, log: Callable[[int, dict], None] | None = None,
            prefix: str = "vae", decode_kwargs: dict | None = None) -> tuple[dict, dict]:
    """Train ``vae`` (a fresh nnx module with ``encode``/``decode``) by config section ``c`` on
    the uint8 batches of the iterator ``data``: returns its parameters and the timing
    (``train_s``, ``step_s`` after compilation). ``log(step, scalars)`` receives the metrics;
    ``decode_kwargs`` go to the VAE's decode in the loss."""
    colour_weight = c.get("colour_weight", 0.0)
    for name, value in (("learning_rate", c.learning_rate), ("kl_weight", c.kl_weight),
                        ("edge_weight", c.edge_weight), ("colour_weight", colour_weight)):
        if not value >= 0 or (name == "learning_rate" and not value > 0):
            raise ValueError(f"config key {prefix}.{name}={value!r} must be "
                             f"{'positive' if name == 'learning_rate' else '>= 0'}")
    started = time.time()
    graphdef, state = nnx.split(vae, nnx.Param)
    params = nnx.to_pure_dict(state)
    schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, min(c.warmup_steps, c.steps),
                                                  max(c.steps, c.warmup_steps + 1), end_value=0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt_state = tx.init(params)
    # sample_posterior=False reconstructs from the posterior mean: a fresh Wan VAE's latents are
    # ~0.01 against unit sampling noise, and sampled, its decoder learnt to ignore them.
    step_fn = make_train_step(graphdef, tx, c.kl_weight, c.edge_weight, to_unit, c.get("sample_posterior", True),
                              decode_kwargs, colour_weight)
    key = jax.random.key(c.seed)
    compiled_at = None
    for step in range(1, c.steps + 1):
        params, opt_state, loss, metrics = step_fn(params, opt_state, next(data), jax.random.fold_in(key, step))
        if compiled_at is None:
            jax.block_until_ready(loss)
            compiled_at = time.time()
        if step % c.log_every == 0 or step == c.steps:
            scalars = {f"{prefix}/loss": float(loss), **{f"{prefix}/{k}": float(v) for k, v in metrics.items()},
                       f"{prefix}/lr": float(schedule(step))}
            logging.info("VAE step %d/%d: %s", step, c.steps, "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
            if log:
                log(step, scalars)
    return params, {"train_s": round(time.time() - started, 1),
                    "step_s": round((time.time() - compiled_at) / max(c.steps - 1, 1), 4) if compiled_at else None}


def trained_before(workdir: str, load: Callable) -> tuple[dict, dict] | None:
    """(parameters, summary) of the VAE a previous run left in WORKDIR/vae and WORKDIR/vae_stats.json
    (``load(folder)`` reads the module), or None: a rerun command reuses its VAE stage."""
    folder, stats_path = os.path.join(workdir, "vae"), os.path.join(workdir, STATS_FILE)
    if not (os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(stats_path)):
        return None
    stats = json.load(open(stats_path))
    logging.info("VAE: loaded the one trained before from %s (%s)", folder, stats)
    return nnx.to_pure_dict(nnx.state(load(folder), nnx.Param)), stats


def train_vae(gen, c, workdir: str, log: Callable[[int, dict], None] | None = None):
    """Train ``gen``'s VAE by config section ``c`` (see the module docstring), or load the one a
    previous run left in WORKDIR/vae; returns ``gen.with_vae(...)`` and the VAE stage's summary
    (also in WORKDIR/vae_stats.json). ``log(step, scalars)`` receives the training metrics."""
    from rdance.models.flux import export_vae, load_vae   # models layer; the world may use it
    folder, stats_path = os.path.join(workdir, "vae"), os.path.join(workdir, STATS_FILE)
    before = trained_before(workdir, lambda path: load_vae(path, **gen.cfg._runtime()))
    if before:
        params, stats = before
        return gen.with_vae(params, stats["scale"], stats["shift"]), stats

    params, timing = fit_vae(AutoencoderKL(gen.cfg.vae(), rngs=nnx.Rngs(c.seed)), c,
                             batches(RenderedCaptions(10_000_000, seed=c.seed, image_size=gen.cfg.image_size),
                                     c.batch_size), to_unit_range, log)
    stats_images = np.concatenate([next(batches(RenderedCaptions(4096, seed=c.seed + 1, image_size=gen.cfg.image_size),
                                                256, 256 * i)) for i in range(4)])
    shift, scale = latent_stats(gen, params, stats_images)
    trained = gen.with_vae(params, scale, shift)
    stats = {"shift": shift, "scale": scale, "steps": c.steps, **timing}
    if c.eval_prompts:
        stats.update(reconstruction_judge(trained, c.eval_prompts))
    logging.info("VAE trained: %s", stats)
    if jax.process_index() == 0:
        export_vae(nnx.merge(trained.vae_def, jax.device_get(params)), folder)
        with open(stats_path, "w") as f:
            json.dump(stats, f, indent=1)
    return trained, stats
