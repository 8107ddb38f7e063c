"""Reward-hacking monitors (RewardDance §4.4) as pure functions of a step's rewards and images,
and the host-side image grid written to TensorBoard.

- the reward's mean and std in the batch;
- its std over a sliding window of the last W steps, kept in the train state as a ring buffer
  [W, samples] so a resumed run continues the same window (the paper's variance signal: a
  window std that collapses late in training means uniform, high-reward outputs);
- the collapse fraction: prompts whose samples all score within eps of each other;
- diversity: the mean RMS pixel distance between two samples of the same prompt.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rdance.diffusion import samples


def window_push(window: jax.Array, step: jax.Array, rewards: jax.Array) -> jax.Array:
    """Write this step's per-sample rewards into row ``step % W`` of the ring buffer."""
    return window.at[step % window.shape[0]].set(rewards.astype(window.dtype))


def window_stats(window: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """Mean and std of every reward in the last min(step + 1, W) steps (``step`` is the row just
    written), and the std of those steps' batch means."""
    rows = window.shape[0]
    valid = jnp.arange(rows) < jnp.minimum(step + 1, rows)
    count = valid.sum() * window.shape[1]
    mean = jnp.sum(jnp.where(valid[:, None], window, 0.0)) / count
    var = jnp.sum(jnp.where(valid[:, None], jnp.square(window - mean), 0.0)) / count
    step_means = window.mean(axis=1)
    means_var = jnp.sum(jnp.where(valid, jnp.square(step_means - mean), 0.0)) / valid.sum()
    return {"window_mean": mean, "window_std": jnp.sqrt(var), "window_std_of_means": jnp.sqrt(means_var)}


def collapse_fraction(rewards: jax.Array, eps: float) -> jax.Array:
    """Fraction of prompts (rows of [prompts, samples]) whose samples' rewards span at most eps."""
    return jnp.mean((rewards.max(axis=-1) - rewards.min(axis=-1)) <= eps)


def diversity(images: jax.Array) -> jax.Array:
    """Mean RMS distance between distinct samples of each prompt: images [prompts, G, H, W, C]
    -> [prompts]. Distances come from a Gram matrix, so memory is G^2 per prompt, not G^2 images."""
    b, g = images.shape[:2]
    x = images.reshape(b, g, -1).astype(jnp.float32)
    sq = jnp.sum(x * x, axis=-1)
    gram = jnp.einsum("bid,bjd->bij", x, x)
    dist = jnp.sqrt(jnp.maximum(sq[:, :, None] + sq[:, None, :] - 2 * gram, 0.0) / x.shape[-1])
    off = 1.0 - jnp.eye(g)
    return jnp.sum(dist * off, axis=(1, 2)) / (g * (g - 1))


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 samples [N, H, W, 3] tiled row by row into one [rows*H, columns*W, 3] image with a
    one-pixel grey border between tiles; clips [N, F, H, W, 3] tile as strips of their frames
    (rdance.diffusion.samples.as_stills)."""
    images = samples.as_stills(images)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 128, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
    return grid
