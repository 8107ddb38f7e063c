"""Training the world video generator's VAE: a tiny ``AutoencoderKLWan`` (Wan 2.1's causal 3D
VAE, rdance.models.wan.vae) on rendered motion clips, by the still world's VAE recipe
(rdance.world.autoencoder.fit_vae: L1 + MSE + edge L1 of a latent sample's reconstruction, small
KL). Afterwards the per-channel mean and std of its latents over rendered clips become the VAE's
``latents_mean``/``latents_std`` (what Wan normalises latents by), and the gate that matters is
:func:`reconstruction_judge`: the motion judge on its reconstructions of faithful held-out clips,
the ceiling of any generator built on it.

Config section ``vae`` (experiments/video_smoke.py): ``steps``, ``batch_size`` (clips),
``learning_rate``, ``warmup_steps``, ``kl_weight``, ``edge_weight``, ``seed``, ``log_every``,
``eval_prompts`` (held-out motion prompts whose clips are reconstructed and judged).
"""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from rdance.models.wan import export_vae, load_vae
from rdance.models.wan.vae import clips_to_video
from rdance.world.autoencoder import STATS_FILE, batches, fit_vae, trained_before
from rdance.world.motion import RenderedClips, motion_prompt_split, render_clip
from rdance.world.evaluate import judge_clips
from rdance.world.video_generator import WorldVideoGenerator


def latent_stats(gen: WorldVideoGenerator, vae_params, clips: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the VAE's posterior means of ``clips`` (Wan's latents_mean/std)."""
    vae = nnx.merge(gen.vae_def, vae_params)
    mean = jax.jit(lambda x: vae.encode(clips_to_video(x))[0])(clips)
    axes = (0, 2, 3, 4)
    return [float(v) for v in jnp.mean(mean, axes)], [float(v) + 1e-6 for v in jnp.std(mean, axes)]


def reconstruction_judge(gen: WorldVideoGenerator, eval_prompts: int, prompt_seed: int = 7, kinds=None,
                         chunk: int = 16) -> dict[str, float]:
    """The motion judge on the VAE's reconstructions (through the normalised latents, as sampling
    decodes) of faithful clips of ``eval_prompts`` held-out motion prompts: ``recon/judge``,
    ``recon/judge/{per_frame,direction,persistence}``, ``recon/mae``; and the judge on the clips
    themselves (``recon/faithful_judge``, 1.0 unless the judge or renderer changed)."""
    _, mscenes = motion_prompt_split(prompt_seed, 0, eval_prompts, *(() if kinds is None else (kinds,)))
    cfg = gen.cfg
    clips = np.stack([render_clip(m, cfg.image_size, cfg.frames, np.random.default_rng([prompt_seed, i]))
                      for i, m in enumerate(mscenes)])
    roundtrip = jax.jit(lambda x: gen.decode(gen.frozen, gen.encode(gen.frozen, x)))
    out_clips = np.concatenate([np.asarray(roundtrip(clips[i:i + chunk])) for i in range(0, len(clips), chunk)])
    out_clips = np.clip(np.round(out_clips * 255.0), 0, 255).astype(np.uint8)
    out = {f"recon/{k}": v for k, v in judge_clips(out_clips, mscenes)[0].items()}
    out["recon/faithful_judge"] = judge_clips(clips, mscenes)[0]["judge"]
    out["recon/mae"] = float(np.abs(out_clips.astype(np.float32) - clips.astype(np.float32)).mean() / 255.0)
    return out


def train_clip_vae(gen: WorldVideoGenerator, c, workdir: str, kinds=None,
                   log: Callable[[int, dict], None] | None = None):
    """Train ``gen``'s VAE by config section ``c`` on rendered clips (of motion prompt ``kinds``,
    None: all), or load the one a previous run left in WORKDIR/vae; returns the generator with
    it and the stage's summary (also in WORKDIR/vae_stats.json)."""
    folder, stats_path = os.path.join(workdir, "vae"), os.path.join(workdir, STATS_FILE)
    before = trained_before(workdir, lambda path: load_vae(path, **gen.cfg._runtime()))
    if before:
        params, stats = before
        return gen.with_vae(params, stats["mean"], stats["std"]), stats
    cfg, extra = gen.cfg, {} if kinds is None else {"kinds": tuple(kinds)}

    def clips(seed, length):
        return RenderedClips(length, seed=seed, image_size=cfg.image_size, frames=cfg.frames, **extra)
    # Unclamped: Wan's decode clamps to [-1, 1] as diffusers' does, and a clamped pixel passes no
    # gradient. A fresh decoder that overshoots below -1 (the dark background) on a quarter of its
    # pixels never learns the objects drawn there: the loss sat flat for 250 steps
    # (bench/results/video_refl.md).
    params, timing = fit_vae(gen.make_vae(), c, batches(clips(c.seed, 10_000_000), c.batch_size), clips_to_video,
                             log, decode_kwargs={"clamp": False})
    stats_clips = next(batches(clips(c.seed + 1, 64), 64))   # 64 clips: 64 x frames x h x w values a channel
    mean, std = latent_stats(gen, params, stats_clips)
    trained = gen.with_vae(params, mean, std)
    stats = {"mean": mean, "std": std, "steps": c.steps, **timing}
    if c.eval_prompts:
        stats.update(reconstruction_judge(trained, c.eval_prompts, kinds=kinds))
    logging.info("VAE trained: %s", stats)
    if jax.process_index() == 0:
        export_vae(trained._vae(jax.device_get(trained.frozen)), folder)
        with open(stats_path, "w") as f:
            json.dump(stats, f, indent=1)
    return trained, stats
