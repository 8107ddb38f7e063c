"""Each ported module against its PyTorch original on the tiny random pipeline (f32, atol 1e-4)."""
import jax
import numpy as np
import pytest
import torch

from rdance.models.flux import load_clip, load_t5, load_transformer, load_vae

ATOL = 1e-4


def max_diff(ours, ref):
    diff = float(np.abs(np.asarray(ours) - ref.detach().numpy()).max())
    print(f"max abs diff: {diff:.2e}")  # shown with pytest -rP, for the parity report
    return diff


def test_transformer(flux_pipe, rng):
    folder, pipe = flux_pipe
    model = load_transformer(folder / "transformer")
    b, s, length = 2, 16, 5
    x = rng.standard_normal((b, s, 16)).astype(np.float32)
    enc = rng.standard_normal((b, length, 32)).astype(np.float32)
    pooled = rng.standard_normal((b, 32)).astype(np.float32)
    t, g = np.array([0.3, 0.9], np.float32), np.array([3.5, 1.0], np.float32)
    img_ids = np.stack(np.meshgrid(np.zeros(1), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    txt_ids = np.zeros((length, 3), np.float32)
    args = dict(hidden_states=x, encoder_hidden_states=enc, pooled_projections=pooled, timestep=t,
                img_ids=img_ids.astype(np.float32), txt_ids=txt_ids, guidance=g)
    with torch.no_grad():
        ref = pipe.transformer(**{k: torch.tensor(v) for k, v in args.items()}).sample
    with jax.default_matmul_precision("highest"):
        ours = model(**args)
    assert max_diff(ours, ref) < ATOL


def test_vae_decode_and_encode(flux_pipe, rng):
    folder, pipe = flux_pipe
    model = load_vae(folder / "vae")
    z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    images = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref_decoded = pipe.vae.decode(torch.tensor(z)).sample
        dist = pipe.vae.encode(torch.tensor(images)).latent_dist
    with jax.default_matmul_precision("highest"):
        decoded = model.decode(z)
        mean, logvar = model.encode(images)
    assert max_diff(decoded, ref_decoded) < ATOL
    assert max_diff(mean, dist.mean) < ATOL
    assert max_diff(logvar, dist.logvar) < ATOL


def test_vae_decode_is_differentiable(flux_pipe, rng):
    """ReFL backpropagates through the rematerialised decode: gradients must be finite, non-zero."""
    model = load_vae(flux_pipe[0] / "vae", remat="full")
    from flax import nnx
    graphdef, state = nnx.split(model)
    z = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    grad = jax.grad(lambda z: nnx.merge(graphdef, state).decode_latents(z).mean())(z)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_t5(flux_pipe, rng):
    folder, pipe = flux_pipe
    model = load_t5(folder / "text_encoder_2")
    ids = rng.integers(0, 55, (2, 40))  # longer than max_distance: exercises the log buckets
    with torch.no_grad():
        ref = pipe.text_encoder_2(torch.tensor(ids)).last_hidden_state
    with jax.default_matmul_precision("highest"):
        ours = model(ids)
    assert max_diff(ours, ref) < ATOL


def test_clip_hidden_and_pooled(flux_pipe, rng):
    folder, pipe = flux_pipe
    model = load_clip(folder / "text_encoder")
    ids = rng.integers(0, 52, (2, 16))
    ids[0, 6:], ids[1, 11:] = 53, 53  # end-of-text at different positions
    with torch.no_grad():
        ref = pipe.text_encoder(torch.tensor(ids))
    with jax.default_matmul_precision("highest"):
        hidden, pooled = model(ids)
    assert max_diff(hidden, ref.last_hidden_state) < ATOL
    assert max_diff(pooled, ref.pooler_output) < ATOL


@pytest.mark.parametrize("prompt", ["a red cube", ""])
def test_prompt_encoding_matches_pipeline(flux_pipe, rd_pipe, prompt):
    _, pipe = flux_pipe
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=8)
    with jax.default_matmul_precision("highest"):
        ours, ours_pooled = rd_pipe.text.encode([prompt], max_sequence_length=8)
    assert max_diff(ours, embeds) < ATOL
    assert max_diff(ours_pooled, pooled) < ATOL


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 4, 3)])
def test_upsample_conv_equals_upsample_then_conv(shape, rng):
    """The decoder's phase-split upsampler is the nearest x2 upsampling + 3x3 conv it replaces,
    in value and in gradient (ReFL backpropagates through it), on non-square inputs too."""
    from flax import nnx

    from rdance.models.flux.vae import upsample_conv
    from rdance.models.layers import Conv2d
    conv = Conv2d(shape[-1], 6, 3, padding=1, rngs=nnx.Rngs(0))
    conv.bias[...] = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    naive = lambda x: conv(jax.numpy.repeat(jax.numpy.repeat(x, 2, axis=1), 2, axis=2))  # noqa: E731
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(upsample_conv(conv, x), naive(x), atol=1e-5)
        weights = rng.standard_normal((shape[0], 2 * shape[1], 2 * shape[2], 6)).astype(np.float32)
        grads = [jax.grad(lambda x: (f(x) * weights).sum())(x) for f in (lambda x: upsample_conv(conv, x), naive)]
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)
