"""Wan's schedulers against diffusers' own step loop, with an analytic velocity (x-dependent and
t-dependent, so every UniPC coefficient matters): FlowMatchEuler with shift, UniPC over flow
sigmas for solver orders 1-3, bh1/bh2, lower_order_final on and off, a disabled corrector,
1 to 7 steps; and the clear error for any other scheduler or config."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rdance.diffusion import wan_schedule  # noqa: E402

X0 = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
TARGET = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)


def velocity(x, t, lib):
    """A nonlinear field: pulls x towards TARGET, bent by t (0..1000) and by x itself."""
    s = t / 1000.0
    return (x - lib.asarray(TARGET)) / (1.0 + s) + 0.3 * lib.sin(x) * s


def diffusers_run(scheduler, steps):
    scheduler.set_timesteps(steps)
    x = torch.tensor(X0)
    for t in scheduler.timesteps:
        v = velocity(x, t.float(), torch_lib)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x.numpy(), scheduler.timesteps.numpy()


class torch_lib:
    asarray = staticmethod(torch.tensor)
    sin = staticmethod(torch.sin)


def rdance_run(scheduler, steps):
    sched = wan_schedule.schedule(dict(scheduler.config, _class_name=type(scheduler).__name__), steps)
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda x: wan_schedule.run(lambda x, t: velocity(x, t, jnp), x, sched))(jnp.asarray(X0))
    return np.asarray(out), sched.timesteps


UNIPC = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


@pytest.mark.parametrize("kwargs,steps", [
    (UNIPC, 1), (UNIPC, 2), (UNIPC, 4), (UNIPC, 7),
    (dict(UNIPC, solver_order=1), 4), (dict(UNIPC, solver_order=3), 6),
    (dict(UNIPC, solver_type="bh1", flow_shift=5.0, final_sigmas_type="sigma_min"), 5),
    (dict(UNIPC, flow_shift=1.0), 4),
    (dict(UNIPC, disable_corrector=[1]), 5), (dict(UNIPC, final_sigmas_type="sigma_min", lower_order_final=False), 4),
])
def test_unipc_matches_diffusers(kwargs, steps):
    ref, ref_t = diffusers_run(diffusers.UniPCMultistepScheduler(**kwargs), steps)
    ours, t = rdance_run(diffusers.UniPCMultistepScheduler(**kwargs), steps)
    np.testing.assert_array_equal(t, ref_t.astype(np.float32))
    diff = np.abs(ours - ref).max()
    print(f"UniPC {kwargs} {steps} steps: max abs diff {diff:.2e}")
    assert diff < 1e-5


@pytest.mark.parametrize("shift,steps", [(1.0, 3), (3.0, 4), (5.0, 1)])
def test_flow_match_euler_matches_diffusers(shift, steps):
    ref, ref_t = diffusers_run(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), steps)
    ours, t = rdance_run(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), steps)
    np.testing.assert_allclose(t, ref_t, rtol=1e-6)
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("config,match", [
    (dict(_class_name="DDIMScheduler"), "DDIMScheduler.*FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler"),
    (dict(_class_name="UniPCMultistepScheduler", prediction_type="epsilon"), "flow_prediction"),
    (dict(UNIPC, _class_name="UniPCMultistepScheduler", use_karras_sigmas=True), "use_karras_sigmas"),
    (dict(UNIPC, _class_name="UniPCMultistepScheduler", final_sigmas_type="zero", lower_order_final=False),
     "lower_order_final"),
    (dict(_class_name="FlowMatchEulerDiscreteScheduler", use_dynamic_shifting=True), "use_dynamic_shifting"),
])
def test_other_schedulers_are_clear_errors(config, match):
    with pytest.raises(ValueError, match=match):
        wan_schedule.schedule(config, 4)
