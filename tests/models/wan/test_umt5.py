"""The UMT5 encoder against transformers' UMT5EncoderModel on a tiny random config (f32, atol
1e-4): hidden states with a padding mask, export round trip."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rdance.models.wan import export_umt5, load_umt5  # noqa: E402

ATOL = 1e-4


def max_diff(ours, ref):
    diff = float(np.abs(np.asarray(ours) - ref.detach().numpy()).max())
    print(f"max abs diff: {diff:.2e}")  # shown with pytest -rP, for the parity report
    return diff


def _umt5(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                  feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                                  relative_attention_max_distance=16)
    model = transformers.UMT5EncoderModel(cfg).eval()
    model.save_pretrained(tmp_path / "umt5")
    return tmp_path / "umt5", model


def test_umt5_with_padding(tmp_path):
    folder, model = _umt5(tmp_path)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 50, (2, 30))  # longer than max_distance: exercises the log buckets
    mask = np.ones((2, 30), np.int64)
    mask[0, 12:], ids[0, 12:] = 0, 0   # one padded prompt
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    rd = load_umt5(folder)
    with jax.default_matmul_precision("highest"):
        ours = rd(ids, mask)
    assert max_diff(ours, ref) < ATOL
    # Every layer's own table matters: a T5 loader (one shared table) refuses this folder.
    from rdance.models.convert import ConversionError
    from rdance.models.flux import load_t5
    with pytest.raises(ConversionError, match="relative_attention_bias"):
        load_t5(folder)


def test_umt5_export_round_trip(tmp_path):
    folder, _ = _umt5(tmp_path)
    out = export_umt5(load_umt5(folder), tmp_path / "exported")
    back = transformers.UMT5EncoderModel.from_pretrained(out).eval()
    ids = np.random.default_rng(4).integers(0, 50, (1, 9))
    with torch.no_grad():
        ref = back(torch.tensor(ids)).last_hidden_state
    with jax.default_matmul_precision("highest"):
        ours = load_umt5(out)(ids)
    assert max_diff(ours, ref) < ATOL
