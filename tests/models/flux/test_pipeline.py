"""Whole-pipeline sampling against diffusers' FluxPipeline from the same noise."""
import jax
import numpy as np
import pytest
import torch

PROMPTS = ["a cat", "a dog on a mat"]


def reference(pipe, noise, **kw):
    with torch.no_grad():
        return pipe(PROMPTS, height=16, width=16, num_inference_steps=4, latents=torch.tensor(noise),
                    output_type="latent", max_sequence_length=8, **kw).images.numpy()


def test_four_steps_match_diffusers(flux_pipe, rd_pipe, rng):
    _, pipe = flux_pipe
    noise = rng.standard_normal((2, 16, 16)).astype(np.float32)
    ref = reference(pipe, noise, guidance_scale=3.5)
    with jax.default_matmul_precision("highest"):
        ours = rd_pipe.sample_latents(PROMPTS, height=16, width=16, num_steps=4, guidance_scale=3.5,
                                      noise=noise, max_sequence_length=8)
    print(f"max abs diff: {np.abs(np.asarray(ours) - ref).max():.2e}")
    assert np.abs(np.asarray(ours) - ref).max() < 1e-3


def test_true_cfg_matches_diffusers(flux_pipe, rd_pipe, rng):
    _, pipe = flux_pipe
    noise = rng.standard_normal((2, 16, 16)).astype(np.float32)
    ref = reference(pipe, noise, guidance_scale=1.0, negative_prompt=["blurry"] * 2, true_cfg_scale=4.0)
    with jax.default_matmul_precision("highest"):
        ours = rd_pipe.sample_latents(PROMPTS, height=16, width=16, num_steps=4, guidance_scale=1.0,
                                      noise=noise, negative_prompts=["blurry"], true_cfg_scale=4.0,
                                      max_sequence_length=8)
    print(f"max abs diff: {np.abs(np.asarray(ours) - ref).max():.2e}")
    assert np.abs(np.asarray(ours) - ref).max() < 1e-3


def test_decode_matches_diffusers_images(flux_pipe, rd_pipe, rng):
    _, pipe = flux_pipe
    noise = rng.standard_normal((2, 16, 16)).astype(np.float32)
    latents = reference(pipe, noise, guidance_scale=3.5)
    with torch.no_grad():
        unpacked = pipe._unpack_latents(torch.tensor(latents), 16, 16, pipe.vae_scale_factor)
        ref = pipe.vae.decode(unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    with jax.default_matmul_precision("highest"):
        ours = rd_pipe.decode_latents(latents, 16, 16)
    print(f"max abs diff: {np.abs(np.asarray(ours) - ref.clamp(-1, 1).numpy()).max():.2e}")
    assert np.abs(np.asarray(ours) - ref.clamp(-1, 1).numpy()).max() < 1e-4


@pytest.mark.parametrize("height,width", [(15, 16), (16, 18), (0, 16)])
def test_resolution_must_tile(rd_pipe, height, width):
    with pytest.raises(ValueError, match="multiples of 4"):
        rd_pipe.sample_latents(["a cat"], height=height, width=width, num_steps=1)


def test_empty_prompt_list(rd_pipe):
    with pytest.raises(ValueError, match="empty prompt list"):
        rd_pipe.sample_latents([], height=16, width=16, num_steps=1)


def test_long_prompt_warns_or_errors(rd_pipe, caplog):
    long = "a " * 20
    with pytest.raises(ValueError, match="exceed the T5 limit of 8 tokens"):
        rd_pipe.text.encode([long], max_sequence_length=8, on_overflow="error")
    with caplog.at_level("WARNING"):
        embeds, _ = rd_pipe.text.encode([long], max_sequence_length=8, on_overflow="warn")
    assert embeds.shape == (1, 8, 32) and "truncating" in caplog.text


def test_true_cfg_needs_negative_prompt(rd_pipe):
    with pytest.raises(ValueError, match="negative_prompts"):
        rd_pipe.sample_latents(["a cat"], height=16, width=16, num_steps=1, true_cfg_scale=3.0)
