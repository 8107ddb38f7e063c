"""InternVL with attention='chunked' (chunks of 4, dividing no length here) against transformers:
the vision tower, the decoder's causal padded forward and generation through the KV cache."""
import jax
import numpy as np
import pytest

from rdance.models import attention, internvl

torch = pytest.importorskip("torch")


def test_chunked_logits_and_greedy_tokens_match_transformers(hf_folder_300m, batch, reference_logits, reference_greedy,
                                                            monkeypatch):
    monkeypatch.setattr(attention, "Q_CHUNK", 4)
    monkeypatch.setattr(attention, "K_CHUNK", 3)
    _, hf_model, path = hf_folder_300m
    model = internvl.load(path, attention="chunked")
    ids, pixels, mask = batch()
    want = reference_logits(hf_model, ids, pixels, mask)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model.logits(ids, pixels, mask))
    assert np.abs(got - want)[mask.astype(bool)].max() < 1e-4
    ids, pixels, mask = batch(seed=1)
    tokens = reference_greedy(hf_model, ids, pixels, mask, 8)
    with jax.default_matmul_precision("highest"):
        out = model.generate(ids, pixels, mask, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
