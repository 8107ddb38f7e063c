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


@pytest.mark.parametrize("name", list(POLICIES))
def test_transformer_gradients_match_without_remat(flux_pipe, rng, name):
    args = inputs(rng)
    call = lambda m, x: m(**dict(args, hidden_states=x))  # noqa: E731
    want = _grad(load_transformer(flux_pipe[0] / "transformer", remat="none"), args["hidden_states"], call)
    got = _grad(load_transformer(flux_pipe[0] / "transformer", remat=name), args["hidden_states"], call)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", list(POLICIES))
def test_vae_decode_gradients_match_without_remat(flux_pipe, rng, name):
    z = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    call = lambda m, z: m.decode_latents(z)  # noqa: E731
    want = _grad(load_vae(flux_pipe[0] / "vae", remat="none"), z, call)
    got = _grad(load_vae(flux_pipe[0] / "vae", remat=name), z, call)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unknown_remat_name_fails_listing_the_names(flux_pipe, rng):
    model = load_transformer(flux_pipe[0] / "transformer", remat="nothing_saveable")
    with pytest.raises(ValueError, match=r"unknown remat 'nothing_saveable' \('nothing_saveable' is 'full' here\); "
                                         "choose one of none, full, dots, dots_no_batch"):
        model(**inputs(rng))
