"""Every remat name on the FLUX stack (transformer blocks) and the VAE: same outputs, same
gradients as without remat."""
import jax
import numpy as np
import pytest
from flax import nnx

from rdance.models.flux import load_transformer, load_vae
from rdance.models.remat import POLICIES

from .test_convert import inputs


def _grad(model, args, call):
    graphdef, state = nnx.split(model)
    with jax.default_matmul_precision("highest"):
        return jax.grad(lambda x: call(nnx.merge(graphdef, state), x).sum())(args)


# Each case: (loader, folder, input, call); the no-remat gradient is computed once per case.
CASES = {
    "transformer": (load_transformer, "transformer", lambda rng: inputs(rng),
                    lambda args: (args["hidden_states"], lambda m, x: m(**dict(args, hidden_states=x)))),
    "vae": (load_vae, "vae", lambda rng: rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
            lambda z: (z, lambda m, z: m.decode_latents(z))),
}


@pytest.fixture(scope="module")
def without_remat(flux_pipe):
    """Per case: the input, the call, and the gradient without remat."""
    out = {}
    for case, (load, folder, make, split) in CASES.items():
        x, call = split(make(np.random.default_rng(0)))
        out[case] = (x, call, _grad(load(flux_pipe[0] / folder, remat="none"), x, call))
    return out


@pytest.mark.parametrize("name", [n for n in POLICIES if n != "none"])
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_without_remat(flux_pipe, without_remat, case, name):
    x, call, want = without_remat[case]
    got = _grad(CASES[case][0](flux_pipe[0] / CASES[case][1], remat=name), x, call)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unknown_remat_name_fails_listing_the_names(flux_pipe, rng):
    model = load_transformer(flux_pipe[0] / "transformer", remat="nothing_saveable")
    with pytest.raises(ValueError, match=r"unknown remat 'nothing_saveable' \('nothing_saveable' is 'full' here\); "
                                         "choose one of none, full, dots, dots_no_batch"):
        model(**inputs(rng))
