"""Schedule, packing and the samplers against diffusers and against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.diffusion import flow_match
from rdance.diffusion.sampler import rollout_then_step, sample

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("steps,seq_len", [(4, 16), (28, 4096), (50, 1024)])
def test_sigmas_match_diffusers(steps, seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mu = calculate_shift(seq_len)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    np.testing.assert_allclose(flow_match.sigmas(steps, seq_len), scheduler.sigmas.numpy(), atol=1e-6)


def test_static_shift_matches_diffusers():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8))
    cfg = flow_match.ScheduleConfig(shift=3.0, use_dynamic_shifting=False)
    np.testing.assert_allclose(flow_match.sigmas(8, 999, cfg), scheduler.sigmas.numpy(), atol=1e-6)


def test_pack_unpack_and_ids_match_diffusers():
    from diffusers import FluxPipeline
    z = np.random.default_rng(0).standard_normal((2, 4, 6, 8)).astype(np.float32)
    packed = FluxPipeline._pack_latents(torch.tensor(z), 2, 4, 6, 8).numpy()
    np.testing.assert_array_equal(flow_match.pack(z), packed)
    np.testing.assert_array_equal(flow_match.unpack(packed, 6, 8), z)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32).numpy()
    np.testing.assert_array_equal(flow_match.image_ids(6, 8), ids)


def test_latent_size_errors_name_the_fix():
    assert flow_match.latent_hw(1024, 768, 8) == (128, 96)
    with pytest.raises(ValueError, match="multiples of 16.*try 992x768"):
        flow_match.latent_hw(1000, 768, 8)


def linear_velocity(a):
    return lambda x, t: a * x + t


def test_sample_is_euler_and_x0_is_consistent():
    x = jnp.ones((1, 3))
    s = flow_match.sigmas(4, 256)
    out, x0s = sample(linear_velocity(0.5), x, s, return_x0=True)
    ref = np.ones((1, 3))
    for i in range(4):
        v = 0.5 * ref + s[i]
        np.testing.assert_allclose(x0s[i], ref - s[i] * v, rtol=1e-6)
        ref = ref + (s[i + 1] - s[i]) * v
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_rollout_then_step_gradient_flows_through_last_step_only():
    noise = jnp.linspace(-1, 1, 6).reshape(2, 3)
    s = jnp.asarray(flow_match.sigmas(6, 256))
    k = 3
    x0, _ = rollout_then_step(linear_velocity(0.7), noise, s, k)
    _, x0s = sample(linear_velocity(0.7), noise, s, return_x0=True)
    np.testing.assert_allclose(x0, x0s[k], rtol=1e-6)

    # Gradient of the ReFL loss equals the gradient of one step from a constant x_k.
    x_k = sample(linear_velocity(0.7), noise, s[: k + 1])
    grad = jax.grad(lambda a: rollout_then_step(linear_velocity(a), noise, s, k)[0].sum())(0.7)
    expected = jax.grad(lambda a: (x_k - s[k] * (a * x_k + s[k])).sum())(0.7)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    # k may be traced: one compiled function for every step index.
    traced = jax.jit(lambda k: rollout_then_step(linear_velocity(0.7), noise, s, k)[0])(k)
    np.testing.assert_allclose(traced, x0, rtol=1e-6)


def test_rollout_then_steps_grades_the_last_steps_as_one_chain():
    noise = jnp.linspace(-1, 1, 6).reshape(2, 3)
    s = jnp.asarray(flow_match.sigmas(6, 256))
    k, graded = 2, 3
    x0, x_next = rollout_then_step(linear_velocity(0.7), noise, s, k, grad_steps=graded)
    x_all, x0s = sample(linear_velocity(0.7), noise, s[: k + graded + 1], return_x0=True)
    np.testing.assert_allclose(x0, x0s[k + graded - 1], rtol=1e-6)
    np.testing.assert_allclose(x_next, x_all, rtol=1e-6)

    # The gradient runs back through the graded steps, and not into the rollout before them.
    x_k = sample(linear_velocity(0.7), noise, s[: k + 1])

    def graded_chain(a):
        x = x_k
        for i in range(k, k + graded):
            v = a * x + s[i]
            x0, x = x - s[i] * v, x + (s[i + 1] - s[i]) * v
        return x0.sum()
    grad = jax.grad(lambda a: rollout_then_step(linear_velocity(a), noise, s, k, graded)[0].sum())(0.7)
    np.testing.assert_allclose(grad, jax.grad(graded_chain)(0.7), rtol=1e-5)
    one_step = jax.grad(lambda a: rollout_then_step(linear_velocity(a), noise, s, k + graded - 1)[0].sum())(0.7)
    assert abs(float(grad - one_step)) > 1e-3   # more than the last step's own gradient
    traced = jax.jit(lambda k: rollout_then_step(linear_velocity(0.7), noise, s, k, graded)[0])(k)
    np.testing.assert_allclose(traced, x0, rtol=1e-6)
