"""UniPC (diffusers' ``UniPCMultistepScheduler``) over flow-matching sigmas, the sampler the released
Wan 2.1 *-Diffusers checkpoints ship (prediction_type='flow_prediction', use_flow_sigmas=True).

UniPC is a multistep predictor-corrector: each model call gives x0 = x - sigma v; the corrector
then refines the sample the previous predictor produced using this new x0, and the predictor
extrapolates from the last ``solver_order`` x0s to the next sigma. Every update is linear in the
sample and the stored x0s with coefficients that depend only on the sigmas, so they are worked
out once on the host (float64, following diffusers' formulas line by line: lambda = log(alpha /
sigma), h, the phi functions, R and b, rhos) and the device loop is a ``lax.scan`` of weighted
sums. That keeps the loop one compiled body and avoids the inf of lambda at sigma = 0 on device.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

CLASS_NAME = "UniPCMultistepScheduler"
# Options whose non-default values change the schedule in ways this port does not model.
_UNSUPPORTED = dict(thresholding=False, use_karras_sigmas=False, use_exponential_sigmas=False,
                    use_beta_sigmas=False, use_dynamic_shifting=False, shift_terminal=None, solver_p=None,
                    predict_x0=True, rescale_betas_zero_snr=False, sigma_min=None, sigma_max=None)


@dataclasses.dataclass(frozen=True)
class UniPCConfig:
    num_train_timesteps: int = 1000
    solver_order: int = 2
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"

    @classmethod
    def from_dict(cls, raw: dict) -> "UniPCConfig":
        """From scheduler_config.json; a setting outside Wan's flow-matching use is a clear error."""
        fix = "Wan's release uses prediction_type='flow_prediction', use_flow_sigmas=true"
        if raw.get("prediction_type") != "flow_prediction" or not raw.get("use_flow_sigmas"):
            raise ValueError(f"UniPCMultistepScheduler with prediction_type={raw.get('prediction_type')!r}, "
                             f"use_flow_sigmas={raw.get('use_flow_sigmas')!r} is not supported: {fix}")
        for key, default in _UNSUPPORTED.items():
            value = raw.get(key, default)
            if value != default and not (default is None and value is False):
                raise ValueError(f"UniPCMultistepScheduler option {key}={raw[key]!r} is not supported by rdance "
                                 f"(keep it {default!r})")
        solver_type = {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}.get(raw.get("solver_type"),
                                                                              raw.get("solver_type", "bh2"))
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"UniPC solver_type {solver_type!r} is not one of bh1, bh2")
        if raw.get("final_sigmas_type", "zero") not in ("zero", "sigma_min"):
            raise ValueError(f"UniPC final_sigmas_type {raw['final_sigmas_type']!r} is not one of zero, sigma_min")
        cfg = cls(num_train_timesteps=int(raw.get("num_train_timesteps", 1000)),
                  solver_order=int(raw.get("solver_order", 2)), solver_type=solver_type,
                  lower_order_final=bool(raw.get("lower_order_final", True)),
                  disable_corrector=tuple(raw.get("disable_corrector") or ()),
                  flow_shift=float(raw.get("flow_shift", 1.0)),
                  final_sigmas_type=raw.get("final_sigmas_type", "zero"))
        if cfg.solver_order < 1:
            raise ValueError(f"UniPC solver_order must be at least 1, got {cfg.solver_order}")
        return cfg


def flow_sigmas(num_steps: int, cfg: UniPCConfig) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [N] as the model sees them, sigmas [N + 1] float32), as ``set_timesteps``
    computes them: shifted linspace in float64, the first nudged below 1, timesteps truncated
    to integers (diffusers stores them as int64)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    s = np.linspace(1, 1 / cfg.num_train_timesteps, num_steps + 1)[:-1]
    s = cfg.flow_shift * s / (1 + (cfg.flow_shift - 1) * s)
    if abs(s[0] - 1) < 1e-6:
        s[0] -= 1e-6
    timesteps = (s * cfg.num_train_timesteps).astype(np.int64).astype(np.float32)
    last = s[-1] if cfg.final_sigmas_type == "sigma_min" else 0.0
    return timesteps, np.append(s, last).astype(np.float32)


def _lambda(sigma):
    with np.errstate(divide="ignore"):
        return np.log(1 - sigma) - np.log(sigma)


def _phis(h, order, solver_type):
    """(h_phi_1, B_h, b [order]) of diffusers' update, with hh = -h (predict_x0)."""
    hh = -h
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if solver_type == "bh1" else np.expm1(hh)
    b, factorial = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, np.asarray(b)


def _predictor(sig, i, order, solver_type, k):
    """Coefficients of (x, m_i, m_{i-1}, ..., m_{i-k}) in the predictor from sigma_i to sigma_{i+1}."""
    lam_t, lam_s = _lambda(sig[i + 1]), _lambda(sig[i])
    h = lam_t - lam_s
    alpha_t = 1 - sig[i + 1]
    h_phi_1, b_h, b = _phis(h, order, solver_type)
    c = np.zeros(2 + k)
    c[0], c[1] = sig[i + 1] / sig[i], -alpha_t * h_phi_1
    if order > 1:
        rks = np.array([(_lambda(sig[i - j]) - lam_s) / h for j in range(1, order)] + [1.0])
        if order == 2:
            rhos = np.array([0.5])
        else:
            r = np.stack([rks ** p for p in range(order)])
            rhos = np.linalg.solve(r[:-1, :-1], b[:-1])
        for j in range(1, order):                         # D1_j = (m_{i-j} - m_i) / rk_j
            w = -alpha_t * b_h * rhos[j - 1] / rks[j - 1]
            c[1 + j] += w
            c[1] -= w
    return c


def _corrector(sig, i, order, solver_type, k):
    """Coefficients of (last_sample, m_i, m_{i-1}, ..., m_{i-k}) in the corrector at step i, which
    refines the sample the step before predicted from last_sample at sigma_{i-1}."""
    lam_t, lam_s = _lambda(sig[i]), _lambda(sig[i - 1])
    h = lam_t - lam_s
    alpha_t = 1 - sig[i]
    h_phi_1, b_h, b = _phis(h, order, solver_type)
    rks = np.array([(_lambda(sig[i - 1 - j]) - lam_s) / h for j in range(1, order)] + [1.0])
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(np.stack([rks ** p for p in range(order)]), b)
    c = np.zeros(2 + k)
    c[0], c[2] = sig[i] / sig[i - 1], -alpha_t * h_phi_1   # x_t_ = s_t / s_s0 x - alpha_t h_phi_1 m_{i-1}
    for j in range(1, order):                              # D1_j = (m_{i-1-j} - m_{i-1}) / rk_j
        w = -alpha_t * b_h * rhos[j - 1] / rks[j - 1]
        c[2 + j] += w
        c[2] -= w
    w = -alpha_t * b_h * rhos[-1]                          # D1_t = m_i - m_{i-1}
    c[1] += w
    c[2] -= w
    return c


def coefficients(sigmas: np.ndarray, cfg: UniPCConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per step i: corrector [N, 3 + K] over (x, last_sample, m_i, m_{i-1}..m_{i-K}) and predictor
    [N, 2 + K] over (corrected x, m_i, m_{i-1}..m_{i-K}), K = solver_order; orders warm up and
    (lower_order_final) wind down as ``step`` chooses them."""
    sig = sigmas.astype(np.float64)
    n, k = len(sigmas) - 1, cfg.solver_order
    corr, pred = np.zeros((n, 3 + k)), np.zeros((n, 2 + k))
    prev_order = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            if i > 0 and (i - 1) not in cfg.disable_corrector:
                c = _corrector(sig, i, prev_order, cfg.solver_type, k)
                corr[i, 1], corr[i, 2:] = c[0], c[1:]
            else:
                corr[i, 0] = 1.0
            order = min(cfg.solver_order, n - i) if cfg.lower_order_final else cfg.solver_order
            order = min(order, i + 1)
            pred[i] = _predictor(sig, i, order, cfg.solver_type, k)
            prev_order = order
    if not (np.isfinite(corr).all() and np.isfinite(pred).all()):
        raise ValueError("UniPC coefficients are not finite for this schedule (diffusers would give NaN): "
                         "use lower_order_final=true with final_sigmas_type='zero'")
    return corr.astype(np.float32), pred.astype(np.float32)


def sample(model: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, timesteps, sigmas,
           corr, pred) -> jax.Array:
    """Run the UniPC loop as one ``lax.scan``; ``model(x, t)`` is the flow velocity at model timestep t.

    The update is float32, as diffusers' scheduler works on float32 latents."""
    k = pred.shape[1] - 2
    x = x.astype(jnp.float32)
    hist = jnp.zeros((k,) + x.shape, jnp.float32)

    def combine(w, terms):
        return sum(w[j] * terms[j] for j in range(len(terms)))

    def body(carry, step):
        x, last, hist = carry
        t, sigma, c, p = step
        m = x - sigma * model(x, t).astype(jnp.float32)
        x = combine(c, [x, last, m] + [hist[j] for j in range(k)])
        x_next = combine(p, [x, m] + [hist[j] for j in range(k)])
        hist = jnp.concatenate([m[None], hist[:-1]], axis=0)
        return (x_next, x, hist), None

    steps = (jnp.asarray(timesteps, jnp.float32), jnp.asarray(sigmas[:-1], jnp.float32),
             jnp.asarray(corr), jnp.asarray(pred))
    (x, _, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x), hist), steps)
    return x
