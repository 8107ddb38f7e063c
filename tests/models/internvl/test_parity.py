"""Logits and greedy generation of rdance's InternVL equal transformers' (both vision flavours)."""
import jax
import numpy as np
import pytest

from rdance.models import internvl

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def loaded(hf_folder):
    flavour, hf_model, path = hf_folder
    return flavour, hf_model, internvl.load(path)


def test_logits_match_transformers(loaded, batch, reference_logits):
    flavour, hf_model, model = loaded
    ids, pixels, mask = batch()
    want = reference_logits(hf_model, ids, pixels, mask)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model.logits(ids, pixels, mask))
    assert got.shape == want.shape == (2, 14, 128)
    err = np.abs(got - want)[mask.astype(bool)].max()
    print(f"{flavour}: max |logits - transformers| = {err:.2e}")
    assert err < 1e-4


def test_greedy_16_tokens_match_transformers(loaded, batch, reference_greedy):
    flavour, hf_model, model = loaded
    ids, pixels, mask = batch(seed=1)
    want = reference_greedy(hf_model, ids, pixels, mask, 16)
    with jax.default_matmul_precision("highest"):
        out = model.generate(ids, pixels, mask, max_new_tokens=16)
    assert want.shape == (2, 16)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    # Log-probs are those of the full forward at the chosen tokens.
    full = np.concatenate([ids, want], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(want)], axis=1)
    with jax.default_matmul_precision("highest"):
        logp = jax.nn.log_softmax(model.logits(full, pixels, full_mask), axis=-1)
    want_logp = np.take_along_axis(np.asarray(logp)[:, ids.shape[1] - 1:-1], want[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs), want_logp, atol=1e-4)
