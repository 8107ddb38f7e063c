"""The FLUX generator interface on a tiny random diffusers FluxPipeline: sampling and decoding
equal diffusers', and a ReFL micro-step sends the RM's gradient through the VAE decode into the
transformer (LoRA factors included)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rdance.core import sharding as sh
from rdance.diffusion import generator as genlib
from rdance.diffusion.flux_generator import FluxGenerator
from rdance.diffusion.sampler import sample
from rdance.reward.api import RewardModel
from rdance.train import lora
from rdance.train.finetune_step import StepSettings, make_micro, step_keys

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from tests.models.flux.conftest import tiny_components  # noqa: E402

PROMPTS = ["a cat", "a dog on a mat"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux")
    pipe = tiny_components(tmp)
    pipe.save_pretrained(tmp / "pipeline")
    return str(tmp / "pipeline"), pipe


def test_flux_generator_samples_and_decodes_like_diffusers(pipeline, devices):
    folder, pipe = pipeline
    mesh = sh.make_mesh((1, 1, 1), devices[:1])
    gen = FluxGenerator.from_pretrained(folder, mesh=mesh, rules=sh.DEFAULT_RULES, height=16, width=16,
                                        guidance_scale=3.5, max_sequence_length=8)
    assert gen.latent_shape == (16, 16) and gen.image_shape == (16, 16, 3)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    params = gen.initial_params(mesh, sh.DEFAULT_RULES)
    noise = np.random.default_rng(0).standard_normal((2, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = pipe(PROMPTS, height=16, width=16, num_inference_steps=4, latents=torch.tensor(noise),
                   output_type="latent", max_sequence_length=8, guidance_scale=3.5).images
        unpacked = pipe._unpack_latents(ref, 16, 16, pipe.vae_scale_factor)
        ref_images = pipe.vae.decode(unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample

    @jax.jit
    def latents_and_images(params, frozen, tokens):
        model = nnx.merge(graphdef, params)
        x = sample(gen.velocity(model, gen.condition(model, frozen, tokens)), noise, genlib.sigmas(gen, 4))
        return x, gen.decode(frozen, x)

    with jax.default_matmul_precision("highest"):
        latents, images = latents_and_images(params, gen.frozen, gen.tokenize(PROMPTS))
        assert np.abs(np.asarray(latents) - ref.numpy()).max() < 1e-3
        expected = (ref_images.clamp(-1, 1).numpy().transpose(0, 2, 3, 1) + 1) / 2
        assert np.abs(np.asarray(images) - expected).max() < 1e-3
        # encode is the VAE's mean latents, packed: the anchor loss's x0.
        uint8 = genlib.to_uint8(images)
        assert jax.jit(gen.encode)(gen.frozen, uint8).shape == (2, *gen.latent_shape)


def test_refl_gradient_reaches_the_flux_transformer_and_lora(pipeline, rm_folder, devices):
    folder, _ = pipeline
    mesh = sh.make_mesh((1, 1, 1), devices[:1])
    gen = FluxGenerator.from_pretrained(folder, mesh=mesh, rules=sh.DEFAULT_RULES, height=16, width=16,
                                        max_sequence_length=8)
    rm = RewardModel.from_pretrained(rm_folder, mesh=mesh)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    base = gen.initial_params(mesh, sh.DEFAULT_RULES)
    factors = lora.init(base, 2, r"(attn|ff|ff_context|proj_mlp)/", jax.random.key(0))
    s = StepSettings(algo="refl", num_steps=3, window=2, samples_per_prompt=1, lora_scale=1.0)
    micro = make_micro(gen, graphdef, rm.pairwise_fn, s, mesh)
    refs = np.random.default_rng(0).integers(0, 255, (2, 1, 16, 16, 3), dtype=np.uint8)
    mb = {"gen": gen.tokenize(PROMPTS), "rm": rm.tokens(PROMPTS, gen.image_shape, pairwise=True), "refs": refs}
    loss, aux, grads = jax.jit(micro)(factors, dict(gen.frozen, base=base), rm.params, mb, jnp.arange(2),
                                      jnp.arange(2), step_keys(jax.random.key(0)), 2)
    assert np.isfinite(float(loss)) and aux["reward"].shape == (2,)
    norms = {"/".join(map(str, path)): float(jnp.linalg.norm(g)) for path, g in jax.tree.leaves_with_path(grads)
             if "lora_a" not in str(path)}
    assert all(np.isfinite(v) for v in norms.values())
    assert sum(v > 0 for v in norms.values()) > len(norms) // 2, norms
    assert gen.drop_captions(mb["gen"], jax.random.key(0), jnp.arange(2)) is mb["gen"]   # guidance-distilled
