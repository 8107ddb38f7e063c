"""The two schedulers a Wan pipeline folder may name in ``scheduler/scheduler_config.json``:
FlowMatchEulerDiscreteScheduler (static ``shift``) and UniPCMultistepScheduler over flow sigmas
(``flow_shift``, what the released Wan 2.1 *-Diffusers folders ship). Both become a
:class:`Schedule` (host arrays) and :func:`run` integrates a velocity model along it in one
``lax.scan``, so the sampler compiles once whichever the folder names.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rdance.diffusion import flow_match, unipc

EULER = "FlowMatchEulerDiscreteScheduler"
SUPPORTED = (EULER, unipc.CLASS_NAME)


@dataclasses.dataclass(frozen=True)
class Schedule:
    kind: str                         # EULER or unipc.CLASS_NAME
    timesteps: np.ndarray             # [N] what the transformer sees (0..1000 scale)
    sigmas: np.ndarray                # [N + 1] noise levels, last 0
    corr: np.ndarray | None = None    # UniPC coefficients (rdance.diffusion.unipc.coefficients)
    pred: np.ndarray | None = None


def _check_euler(raw: dict):
    if raw.get("use_dynamic_shifting"):
        raise ValueError("FlowMatchEulerDiscreteScheduler with use_dynamic_shifting=true needs a resolution-"
                         "dependent mu that the Wan pipelines never pass; set use_dynamic_shifting=false")
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                "shift_terminal", "stochastic_sampling"):
        if raw.get(key):
            raise ValueError(f"FlowMatchEulerDiscreteScheduler option {key} is not supported by rdance's Wan sampler")


def schedule(raw: dict, num_steps: int) -> Schedule:
    """The Schedule of ``num_steps`` steps for a scheduler_config.json dict."""
    name = raw.get("_class_name")
    if name == EULER:
        _check_euler(raw)
        sigmas = flow_match.default_sigmas(num_steps, float(raw.get("shift", 1.0)),
                                           int(raw.get("num_train_timesteps", 1000)))
        return Schedule(EULER, (sigmas[:-1] * np.float32(raw.get("num_train_timesteps", 1000))).astype(np.float32),
                        sigmas)
    if name == unipc.CLASS_NAME:
        cfg = unipc.UniPCConfig.from_dict(raw)
        timesteps, sigmas = unipc.flow_sigmas(num_steps, cfg)
        return Schedule(name, timesteps, sigmas, *unipc.coefficients(sigmas, cfg))
    raise ValueError(f"scheduler {name!r} is not supported for Wan: use one of {', '.join(SUPPORTED)} "
                     "(edit scheduler/scheduler_config.json, e.g. from a released Wan-AI *-Diffusers folder)")


def run(model: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, sched: Schedule) -> jax.Array:
    """Integrate from noise ``x`` along ``sched``; ``model(x, t)`` is the (guided) velocity at
    model timestep t. Returns float32 latents."""
    if sched.kind == unipc.CLASS_NAME:
        return unipc.sample(model, x, sched.timesteps, sched.sigmas, sched.corr, sched.pred)
    sigmas = jnp.asarray(sched.sigmas, jnp.float32)

    def body(x, step):
        t, s, s_next = step
        return x + (s_next - s) * model(x, t).astype(jnp.float32), None

    x, _ = jax.lax.scan(body, x.astype(jnp.float32), (jnp.asarray(sched.timesteps), sigmas[:-1], sigmas[1:]))
    return x
