"""The moving world's video generator (a miniature Wan): the documented pretraining command at tiny
scale writes a WanPipeline folder that rdance's WanSampler and diffusers' WanPipeline sample
alike, and that the fine-tuning kind 'world_video' opens and judges with the motion judge; its
VAE trains even where its fresh decoder's output starts outside the clamp; bad configs fail with
errors that name the fix."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from rdance.core import sharding
from rdance.data.registry import open_source
from experiments import finetune_video_smoke
from rdance.diffusion.generator import open_generator
from rdance.diffusion.wan_pipeline import WanSampler
from rdance.train.generator_eval import Sampler
from rdance.world.video_autoencoder import train_clip_vae
from rdance.world.video_generator import WorldVideoConfig, WorldVideoGenerator
from tests.conftest import REPO, cpu_xla_flags
from tests.models.wan.test_transformer import _diffusers_load as diffusers_transformer

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TINY = ("--config.model.vae_base_dim=4", "--config.model.text_dim=16", "--config.model.text_layers=1",
        "--config.model.text_heads=2", "--config.model.heads=2", "--config.model.head_dim=12",
        "--config.model.layers=1", "--config.model.ffn_dim=32", "--config.model.freq_dim=16")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(workdir, its metrics) of the documented pretraining command at tiny sizes: 2 VAE steps,
    3 flow-matching steps, the motion judge on 2 held-out prompts at the end."""
    workdir = str(tmp_path_factory.mktemp("video_smoke"))
    command = [sys.executable, "-m", "rdance.run.pretrain_generator", "--config=experiments/video_smoke.py",
               f"--workdir={workdir}", *TINY, "--config.vae.steps=2", "--config.vae.batch_size=2",
               "--config.vae.eval_prompts=2", "--config.data.global_batch_size=4", "--config.train.steps=3",
               "--config.train.log_every=1", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
               "--config.eval.prompts=2", "--config.eval.samples=1", "--config.eval.num_steps=2",
               "--config.eval.chunk=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=cpu_xla_flags(1))
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return workdir, metrics


def test_pretraining_exports_a_wan_pipeline_that_diffusers_samples_alike(pretrained):
    workdir, metrics = pretrained
    evals = [m for m in metrics if "eval/judge" in m]
    assert evals and {"eval/judge/per_frame", "eval/judge/direction", "eval/judge/persistence"} <= set(evals[-1])
    stats = json.load(open(os.path.join(workdir, "vae_stats.json")))
    assert stats["recon/faithful_judge"] == 1.0 and 0.0 <= stats["recon/judge"] <= 1.0
    folder = os.path.join(workdir, "export")
    gen = WorldVideoGenerator.from_pretrained(folder)
    assert gen.cfg.vae_latents_std == tuple(stats["std"])
    size = dict(num_frames=gen.cfg.frames, height=32, width=32)
    noise = np.random.default_rng(0).standard_normal((2, 4, gen.cfg.latent_frames, 16, 16)).astype(np.float32)
    prompts = ["a red circle moving left", "a blue square staying still"]
    ours = WanSampler.from_pretrained(folder)(prompts, num_steps=3, guidance_scale=1.0, latents=noise,
                                              max_sequence_length=gen.cfg.max_tokens, output_type="latent", **size)
    # diffusers without accelerate refuses Wan's keep-in-fp32 transformer: that part is loaded strictly by hand.
    transformer = diffusers_transformer(Path(folder) / "transformer")
    pipe = diffusers.WanPipeline.from_pretrained(folder, transformer=transformer)
    with torch.no_grad():
        ref = pipe(prompt=prompts, num_inference_steps=3, guidance_scale=1.0, latents=torch.tensor(noise),
                   max_sequence_length=gen.cfg.max_tokens, output_type="latent", **size).frames.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-3)
    # The folder's generator (what fine-tuning opens) computes the velocity WanSampler uses.
    params = gen.initial_params(None, sharding.DEFAULT_RULES)
    model = nnx.merge(nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0], params)
    cond = gen.condition(model, gen.frozen, gen.tokenize(prompts))
    assert cond["text"].shape == (2, gen.cfg.max_tokens, gen.cfg.text_dim)


def test_world_video_kind_opens_the_folder_for_fine_tuning_and_judges_held_out_motion(pretrained, tmp_path):
    """What the fine-tuning loop opens (kind 'world_video', experiments/finetune_video_smoke.py):
    the folder's clip shape, the moving world's prompt split, rendered anchor clips, and the motion
    judge's scalars on held-out prompts."""
    import rdance.world  # noqa: F401  registers the kind
    config = finetune_video_smoke.get_config()
    config.generator.path = os.path.join(pretrained[0], "export")
    config.data.update(dict(train_prompts=3, eval_prompts=2))
    mesh = sharding.make_mesh((1, -1, 1), jax.devices()[:1])
    gen = open_generator(config.generator, mesh, sharding.DEFAULT_RULES)
    assert gen.kind == "world_video" and gen.image_shape == (5, 32, 32, 3) and gen.max_sequence_length == 12
    train, heldout = gen.prompts(config.data)
    assert len(train) == 3 and not set(train) & {m.prompt for m in heldout}
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    evaluate = gen.heldout_evaluator(Sampler(gen, graphdef, mesh, 2, 2, 0), heldout, 1)
    scalars, clips = evaluate(gen.initial_params(mesh, sharding.DEFAULT_RULES), gen.frozen)
    assert clips.shape == (2, 5, 32, 32, 3) and clips.dtype == np.uint8
    for key in ("judge", "judge/per_frame", "judge/direction", "judge/persistence"):
        assert 0.0 <= scalars[key] <= 1.0
    assert gen.heldout_evaluator(None, ["a prompt string"], 1) is None
    prompt, clip = gen.caption_images(4, seed=0)[0]
    assert clip.shape == (5, 32, 32, 3) and "moving" in prompt or "staying" in prompt
    # A fine-tuned folder opens as the same kind again.
    config.generator.path = gen.export(gen.initial_params(None, sharding.DEFAULT_RULES), str(tmp_path / "tuned"))
    assert open_generator(config.generator, mesh, sharding.DEFAULT_RULES, abstract=True).world == gen.world


def test_clip_vae_trains_where_its_fresh_decoder_overshoots(tmp_path, monkeypatch):
    """Wan's decode clamps to [-1, 1], and a clamped pixel passes no gradient: trained through the
    clamp, a decoder whose output starts below -1 everywhere would never move (the flat loss of
    bench/results/video_refl.md). The VAE stage trains on the unclamped output, so it does."""
    WorldVideoGenerator.write_tokenizer(str(tmp_path / "tok"))
    gen = WorldVideoGenerator.create(dict(vae_base_dim=4), str(tmp_path / "tok"))
    fresh = gen.make_vae

    def overshooting():
        vae = fresh()
        vae.decoder.conv_out.bias.value = jnp.full_like(vae.decoder.conv_out.bias.value, -3.0)
        return vae
    monkeypatch.setattr(gen, "make_vae", overshooting)
    c = ml_collections.ConfigDict(dict(steps=3, batch_size=2, learning_rate=1e-2, warmup_steps=1, kl_weight=1e-4,
                                       edge_weight=1.0, sample_posterior=False, seed=0,
                                       log_every=1, eval_prompts=0))
    losses = []
    train_clip_vae(gen, c, str(tmp_path / "run"), log=lambda step, scalars: losses.append(scalars["vae/loss"]))
    assert len(losses) == 3 and losses[2] < losses[0] - 1e-3


def test_bad_configs_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="1 \\+ 4k frames.*try 9"):
        WorldVideoConfig(frames=8)
    with pytest.raises(ValueError, match="halve time at one level"):
        WorldVideoConfig(vae_temporal_downsample=(False,))
    with pytest.raises(ValueError, match="image_size 34 is not a multiple of 4"):
        WorldVideoConfig(image_size=34)
    with pytest.raises(ValueError, match="caption dropout"):
        WorldVideoConfig(guidance_scale=3.0)
    WorldVideoGenerator.write_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="model.vae_channels are not WorldVideoConfig sizes"):
        WorldVideoGenerator.create(dict(vae_channels=(8, 8)), str(tmp_path / "tok"))
    gen = WorldVideoGenerator.create({}, str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="outside the generator's vocabulary"):
        gen.tokenize(["a red circle moving sideways"])
    with pytest.raises(FileNotFoundError, match="not a world_video generator folder"):
        WorldVideoGenerator.from_pretrained(str(tmp_path))
    from rdance.world.world_wan import WorldWanGenerator
    config = finetune_video_smoke.get_config()
    with pytest.raises(ValueError, match="needs generator.path"):
        WorldWanGenerator.open(config.generator, None, sharding.DEFAULT_RULES)
    from experiments import video_smoke
    from rdance.run.pretrain_generator import make_generator
    config = video_smoke.get_config()
    config.kind = "world_movie"
    with pytest.raises(ValueError, match="kind='world_movie'.*'world' or 'world_video'"):
        make_generator(config, str(tmp_path))


def test_direction_pairs_set_a_faithful_clip_against_the_wrong_way():
    import rdance.world  # noqa: F401  registers the sources
    data = ml_collections.ConfigDict(dict(image_size=32, clip_frames=5))
    pairs = open_source("world_clip_misses:direction", data, seed=0, size=6, noise=0.0)
    for record in (pairs[i] for i in range(6)):
        assert "moving" in record.rationale or "staying" in record.rationale
        assert record.images[0].shape == (5, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown near misses \\['sideways'\\]"):
        open_source("world_clip_misses:sideways", data, seed=0, size=2, noise=0.0)
    with pytest.raises(ValueError, match="needs the near misses"):
        open_source("world_clip_misses", data, seed=0, size=2, noise=0.0)
