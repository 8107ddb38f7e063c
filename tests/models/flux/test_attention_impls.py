"""FLUX's modules with attention='chunked' (chunks of 4, which divide no length here) against their
PyTorch originals, as the xla parity tests do: the transformer's joint attention, T5's relative
bias, CLIP's causal mask and the VAE's single-head mid-block attention."""
import jax
import numpy as np
import pytest
import torch

from rdance.models import attention
from rdance.models.flux import load_clip, load_t5, load_transformer, load_vae

ATOL = 1e-4


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(attention, "Q_CHUNK", 4)
    monkeypatch.setattr(attention, "K_CHUNK", 4)


def diff(ours, ref):
    return float(np.abs(np.asarray(ours) - ref.detach().numpy()).max())


def test_transformer(flux_pipe, rng):
    folder, pipe = flux_pipe
    model = load_transformer(folder / "transformer", attention="chunked")
    b, s, length = 2, 16, 5
    img_ids = np.stack(np.meshgrid(np.zeros(1), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    args = dict(hidden_states=rng.standard_normal((b, s, 16)).astype(np.float32),
                encoder_hidden_states=rng.standard_normal((b, length, 32)).astype(np.float32),
                pooled_projections=rng.standard_normal((b, 32)).astype(np.float32),
                timestep=np.array([0.3, 0.9], np.float32), img_ids=img_ids.astype(np.float32),
                txt_ids=np.zeros((length, 3), np.float32), guidance=np.array([3.5, 1.0], np.float32))
    with torch.no_grad():
        ref = pipe.transformer(**{k: torch.tensor(v) for k, v in args.items()}).sample
    with jax.default_matmul_precision("highest"):
        assert diff(model(**args), ref) < ATOL


def test_t5_and_clip_with_padding(flux_pipe, rng):
    folder, pipe = flux_pipe
    t5, clip = (load_t5(folder / "text_encoder_2", attention="chunked"),
                load_clip(folder / "text_encoder", attention="chunked"))
    ids = rng.integers(0, 55, (2, 18))
    mask = np.ones((2, 18), np.int64)
    mask[1, 11:] = 0
    with torch.no_grad():
        ref_t5 = pipe.text_encoder_2(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        ref_clip = pipe.text_encoder(torch.tensor(ids[:, :16]), attention_mask=torch.tensor(mask[:, :16]))
    with jax.default_matmul_precision("highest"):
        assert diff(t5(ids, mask), ref_t5) < ATOL
        hidden, pooled = clip(ids[:, :16], mask[:, :16])
    assert diff(hidden, ref_clip.last_hidden_state) < ATOL
    assert diff(pooled, ref_clip.pooler_output) < ATOL


def test_vae_decode(flux_pipe, rng):
    folder, pipe = flux_pipe
    model = load_vae(folder / "vae", attention="chunked")
    z = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)   # 36 mid-block tokens
    with torch.no_grad():
        ref = pipe.vae.decode(torch.tensor(z)).sample
    with jax.default_matmul_precision("highest"):
        assert diff(model.decode(z), ref) < ATOL
