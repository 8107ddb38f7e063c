"""Euler sampling of a flow-matching model as one ``lax.scan``, and the ReFL rollout.

``velocity(x, t)`` is any function of packed latents and a noise level in [0, 1] (a closure over
the transformer state and the text conditioning, see :func:`flux_velocity`). Both samplers are
pure, so they jit, shard and differentiate like any other JAX function.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rdance.diffusion.flow_match import x0_from_velocity

Velocity = Callable[[jax.Array, jax.Array], jax.Array]


def euler_step(velocity: Velocity, x: jax.Array, t, t_next):
    """One Euler step from t to t_next; returns (x_next, x0 estimate at t). The update is done in
    float32, as diffusers' scheduler does, whatever the model's dtype."""
    v = velocity(x, t).astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    x_next = x32 + (t_next - t) * v
    return x_next.astype(x.dtype), x0_from_velocity(x32, t, v).astype(x.dtype)


def sample(velocity: Velocity, noise: jax.Array, sigmas: jax.Array, *, return_x0: bool = False):
    """Integrate from ``noise`` at sigmas[0] to sigmas[-1]; optionally also every step's x0."""
    sigmas = jnp.asarray(sigmas, jnp.float32)

    def body(x, ts):
        x_next, x0 = euler_step(velocity, x, ts[0], ts[1])
        return x_next, x0 if return_x0 else None

    x, x0s = jax.lax.scan(body, noise, (sigmas[:-1], sigmas[1:]))
    return (x, x0s) if return_x0 else x


def rollout_then_step(velocity: Velocity, noise: jax.Array, sigmas: jax.Array, k, grad_steps: int = 1):
    """ReFL: run steps 0..k-1 without gradient, then steps k..k+grad_steps-1 with gradient.

    Returns (x0, x_next): the x0 prediction at the last graded step (what ReFL decodes and
    scores) and the latents after it. ``k`` may be a traced integer (e.g. drawn per batch): the
    gradient-free part is a ``fori_loop`` whose length is data, so one compiled function serves
    every k. With ``grad_steps`` > 1 the gradient runs back through that many Euler steps (as in
    DRaFT-K), each rematerialised in the backward pass; the caller keeps k + grad_steps <= T.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)

    def no_grad_step(i, x):
        return euler_step(velocity, x, sigmas[i], sigmas[i + 1])[0]

    x = jax.lax.stop_gradient(jax.lax.fori_loop(0, k, no_grad_step, jax.lax.stop_gradient(noise)))
    if grad_steps == 1:   # plain ReFL: one step, nothing to rematerialise
        x_next, x0 = euler_step(velocity, x, sigmas[k], sigmas[k + 1])
        return x0, x_next

    @jax.checkpoint
    def graded_step(x, i):
        x_next, x0 = euler_step(velocity, x, sigmas[k + i], sigmas[k + i + 1])
        return x_next, x0

    x_next, x0s = jax.lax.scan(graded_step, x, jnp.arange(grad_steps))
    return x0s[-1], x_next


def flux_velocity(transformer: Callable, cond: dict, *, guidance=None, negative: dict | None = None,
                  true_cfg_scale=1.0) -> Velocity:
    """Velocity function of FLUX's transformer for fixed text conditioning.

    ``transformer`` takes FluxTransformer's keyword arguments; ``cond``/``negative`` hold
    'prompt_embeds', 'pooled', 'txt_ids', 'img_ids'. With a ``negative`` conditioning this is
    diffusers' true CFG, v = v_neg + s (v_pos - v_neg) (the caller passes one only when s > 1);
    ``guidance`` feeds the distilled guidance embedding of FLUX.1-dev.
    """
    def model(x, t, c):
        return transformer(hidden_states=x, encoder_hidden_states=c["prompt_embeds"],
                           pooled_projections=c["pooled"], timestep=jnp.full((x.shape[0],), t, x.dtype),
                           img_ids=c["img_ids"], txt_ids=c["txt_ids"], guidance=guidance)

    if negative is None:
        return lambda x, t: model(x, t, cond)

    def guided(x, t):
        v_pos, v_neg = model(x, t, cond), model(x, t, negative)
        return v_neg + true_cfg_scale * (v_pos - v_neg)
    return guided
