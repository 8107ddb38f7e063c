"""Flow matching as FLUX uses it: the noise schedule and the packed latent layout.

x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0, so x0 = x_t - t v at any t.
FLUX shifts the schedule towards high noise for larger images ("resolution-dependent shift"):
t' = e^mu / (e^mu + (1/t - 1)) with mu linear in the number of image tokens.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The fields of diffusers' FlowMatchEulerDiscreteScheduler config that FLUX uses."""
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15
    shift: float = 1.0
    use_dynamic_shifting: bool = True

    @classmethod
    def from_dict(cls, raw: dict) -> "ScheduleConfig":
        if raw.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
            raise ValueError(f"scheduler {raw['_class_name']} is not supported; FLUX uses "
                             "FlowMatchEulerDiscreteScheduler")
        for unsupported in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                            "invert_sigmas", "shift_terminal", "stochastic_sampling"):
            if raw.get(unsupported):
                raise ValueError(f"scheduler option {unsupported} is not supported by rdance's sampler")
        if raw.get("time_shift_type", "exponential") != "exponential":
            raise ValueError(f"time_shift_type {raw['time_shift_type']!r} is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def calculate_shift(image_seq_len: int, cfg: ScheduleConfig) -> float:
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    return image_seq_len * slope + cfg.base_shift - slope * cfg.base_image_seq_len


def sigmas(num_steps: int, image_seq_len: int, cfg: ScheduleConfig = ScheduleConfig()) -> np.ndarray:
    """The num_steps + 1 noise levels from 1 (noise) down to 0 (data), shifted as FLUX does."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    s = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    if cfg.use_dynamic_shifting:
        mu = calculate_shift(image_seq_len, cfg)
        s = math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))
    else:
        s = cfg.shift * s / (1 + (cfg.shift - 1) * s)
    return np.append(s.astype(np.float32), np.float32(0.0))


def latent_hw(height: int, width: int, vae_factor: int) -> tuple[int, int]:
    """Unpacked latent height and width; images must tile into 2x2 patches of latent pixels."""
    unit = 2 * vae_factor
    if height <= 0 or width <= 0 or height % unit or width % unit:
        raise ValueError(f"image size {height}x{width} must be positive multiples of {unit} "
                         f"(2x2 patches x VAE factor {vae_factor}); try "
                         f"{max(unit, round(height / unit) * unit)}x{max(unit, round(width / unit) * unit)}")
    return height // vae_factor, width // vae_factor


def pack(latents: jax.Array, factor: int = 2) -> jax.Array:
    """NCHW latents -> [B, (H/f)(W/f), C*f*f] tokens of f x f patches, channel-major; f = 2 is
    diffusers' _pack_latents (FLUX), f = 1 makes each latent pixel a token."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // factor, factor, w // factor, factor).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // factor) * (w // factor), c * factor * factor)


def unpack(tokens: jax.Array, h: int, w: int, factor: int = 2) -> jax.Array:
    """Inverse of :func:`pack` for latent height ``h`` and width ``w``."""
    b, _, d = tokens.shape
    c = d // (factor * factor)
    x = tokens.reshape(b, h // factor, w // factor, c, factor, factor).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int) -> np.ndarray:
    """Rotary position ids [(h/2)(w/2), 3] of packed tokens: (0, row, column)."""
    ids = np.zeros((h // 2, w // 2, 3), np.float32)
    ids[..., 1] = np.arange(h // 2)[:, None]
    ids[..., 2] = np.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def x0_from_velocity(x_t: jax.Array, t, v: jax.Array) -> jax.Array:
    """Clean-sample estimate at noise level t: x0 = x_t - t v."""
    return x_t - jnp.asarray(t, x_t.dtype) * v


def default_sigmas(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> np.ndarray:
    """The num_steps + 1 sigmas of diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps called
    without ``sigmas`` (as the Wan pipelines call it) and a static ``shift``: a linspace between
    the already shifted sigma_max and sigma_min of its training table, shifted once more."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    table = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1] / num_train_timesteps
    table = (shift * table / (1 + (shift - 1) * table)).astype(np.float32)
    s = np.linspace(float(table[0]) * num_train_timesteps, float(table[-1]) * num_train_timesteps,
                    num_steps) / num_train_timesteps
    s = shift * s / (1 + (shift - 1) * s)
    return np.append(s.astype(np.float32), np.float32(0.0))
