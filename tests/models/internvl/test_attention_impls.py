"""InternVL with attention='chunked' (chunks of 4, dividing no length here) against transformers:
the vision tower, the decoder's causal padded forward and generation through the KV cache."""
import jax
import numpy as np
import pytest

from rdance.models import attention, internvl

torch = pytest.importorskip("torch")


def test_chunked_logits_and_greedy_tokens_match_transformers(hf_folder_300m, batch, reference_logits, monkeypatch):
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
    with torch.no_grad():
        tokens = hf_model.generate(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                                   attention_mask=torch.tensor(mask), max_new_tokens=8, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:].numpy()
    with jax.default_matmul_precision("highest"):
        out = model.generate(ids, pixels, mask, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
