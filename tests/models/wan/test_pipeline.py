"""Wan sampling against diffusers' WanPipeline and WanImageToVideoPipeline on tiny random
pipelines saved with save_pretrained: 4-step latents (output_type='latent', the same initial
latents) with true CFG and a negative prompt, for the UniPC and FlowMatchEuler schedulers, to
atol 1e-3; decoded frames; and the errors for bad inputs."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from rdance.diffusion.wan_pipeline import WanSampler  # noqa: E402

ATOL = 1e-3
SIZE = dict(num_frames=5, height=32, width=16)


def _noise(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 4, 2, 4, 2)).astype(np.float32)


def _parity(ours, ref, what):
    diff = float(np.abs(np.asarray(ours) - ref).max())
    print(f"{what}: max abs diff {diff:.2e} (latents' max |x| {np.abs(ref).max():.2f})")
    assert diff < ATOL


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_t2v_latents_match_diffusers(wan_pipes, scheduler):
    folder, pipe = wan_pipes["t2v", scheduler]
    kw = dict(prompt="a cat surfs", negative_prompt="blurry", guidance_scale=5.0, **SIZE)
    with torch.no_grad():
        ref = pipe(**kw, num_inference_steps=4, latents=torch.tensor(_noise()), output_type="latent",
                   max_sequence_length=16).frames.numpy()
    rd = WanSampler.from_pretrained(folder)
    with jax.default_matmul_precision("highest"):
        ours = rd(["a cat surfs"], negative_prompts=["blurry"], guidance_scale=5.0, num_steps=4, latents=_noise(),
                  max_sequence_length=16, output_type="latent", **SIZE)
    _parity(ours, ref, f"T2V {scheduler}")


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_i2v_latents_match_diffusers(wan_pipes, first_frame, scheduler, monkeypatch):
    folder, pipe = wan_pipes["i2v", scheduler]
    # diffusers 0.42's I2V prompt_clean calls ftfy even when it is not installed (T2V checks):
    # without ftfy, cleaning is the HTML and whitespace part in both, as rdance does.
    import types
    import diffusers.pipelines.wan.pipeline_wan_i2v as i2v
    monkeypatch.setattr(i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    # diffusers' I2V attention takes the last 512 context tokens as text: 512 here.
    kw = dict(prompt="the cat jumps", guidance_scale=4.0, **SIZE)
    with torch.no_grad():
        ref = pipe(image=Image.fromarray(first_frame), **kw, num_inference_steps=4, latents=torch.tensor(_noise(1)),
                   output_type="latent", max_sequence_length=512).frames.numpy()
    rd = WanSampler.from_pretrained(folder)
    with jax.default_matmul_precision("highest"):
        ours = rd(["the cat jumps"], image=first_frame, guidance_scale=4.0, num_steps=4, latents=_noise(1),
                  max_sequence_length=512, output_type="latent", **SIZE)
    _parity(ours, ref, f"I2V {scheduler}")


def test_t2v_frames_match_diffusers_without_guidance(wan_pipes):
    """guidance 1: one pass per step; the decoded uint8 frames agree with diffusers' to one level."""
    folder, pipe = wan_pipes["t2v", "unipc"]
    with torch.no_grad():
        ref = pipe(prompt="a dog", guidance_scale=1.0, num_inference_steps=2, latents=torch.tensor(_noise(2)),
                   output_type="np", max_sequence_length=16, **SIZE).frames
    with jax.default_matmul_precision("highest"):
        frames = WanSampler.from_pretrained(folder)(["a dog"], guidance_scale=1.0, num_steps=2, latents=_noise(2),
                                                    max_sequence_length=16, **SIZE)
    assert frames.shape == (1, 5, 32, 16, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - np.round(ref * 255).astype(int)).max() <= 1


@pytest.mark.parametrize("task,kwargs,match", [
    ("t2v", dict(num_frames=6), "4k\\+1.*try 5"),
    ("t2v", dict(height=24), "multiples of 16"),
    ("i2v", dict(), "image-to-video pipeline: give the first frame"),
    ("t2v", dict(image=np.zeros((32, 16, 3), np.uint8)), "WanImageToVideoPipeline folder"),
])
def test_bad_inputs_are_one_line_errors(wan_pipes, task, kwargs, match):
    rd = WanSampler.from_pretrained(wan_pipes[task, "euler"][0])
    with pytest.raises(ValueError, match=match):
        rd(["x"], **{**SIZE, "num_steps": 1, **kwargs})


def test_sharded_sampling_matches_one_device(wan_pipes, first_frame, devices):
    """Every part loaded onto a 4-device fsdp x tensor mesh samples the same I2V latents."""
    from rdance.core import sharding
    folder = wan_pipes["i2v", "unipc"][0]
    kw = dict(image=first_frame, guidance_scale=3.0, num_steps=2, latents=_noise(3), max_sequence_length=8,
              output_type="latent", **SIZE)
    with jax.default_matmul_precision("highest"):
        want = WanSampler.from_pretrained(folder)(["a cat"], **kw)
        mesh = sharding.make_mesh((1, 2, 2), devices[:4])
        got = WanSampler.from_pretrained(folder, mesh=mesh)(["a cat"], **kw)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() < 1e-5


def test_a_batch_equals_its_videos_sampled_one_by_one(wan_pipes):
    """Three prompts in one call from seed 3 give the latents that each prompt gives alone from
    seed 3, 4, 5 (noise drawn per video; CFG with a negative prompt, so both passes are batched)."""
    rd = WanSampler.from_pretrained(wan_pipes["t2v", "euler"][0])
    prompts = ["a cat surfs", "a dog skis", "two birds"]
    kw = dict(guidance_scale=5.0, num_steps=2, max_sequence_length=16, output_type="latent", **SIZE)
    batched = np.asarray(rd(prompts, negative_prompts=["blurry"] * 3, seed=3, **kw))
    alone = np.concatenate([np.asarray(rd([p], negative_prompts=["blurry"], seed=3 + i, **kw))
                            for i, p in enumerate(prompts)])
    diff = np.abs(batched - alone).max()
    print(f"batched vs one by one: max abs diff {diff:.1e} (latents' max |x| {np.abs(alone).max():.2f})")
    assert diff < 1e-5
    assert np.abs(alone[0] - alone[1]).max() > 0.1    # different prompts and seeds: different videos
