"""WanGenerator (kind 'wan') on the session's lean tiny random WanPipeline folder (its VAE
downsamples 4x in time and space): opened real and
abstract from a config section, clip shapes through decode and encode, Wan's classifier-free
guidance, the export that diffusers' WanPipeline and WanSampler load back, and the bad inputs."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from rdance.core import sharding  # noqa: E402
from rdance.diffusion import generator as genlib  # noqa: E402
from rdance.diffusion.wan_generator import WanGenerator  # noqa: E402
from rdance.diffusion.wan_pipeline import WanSampler  # noqa: E402
from tests.models.wan.test_transformer import _diffusers_load  # noqa: E402

SIZE = dict(num_frames=5, height=32, width=16)
# Unoptimised machine code: these programs run once (tests/train/conftest.py's TINY does the same).
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def run_once(fn, *args):
    """``fn(*args)`` compiled as one program (eager nnx calls would compile op by op)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def section(folder, **overrides):
    """A config's generator section, as experiments/finetune_wan.py writes it."""
    return ml_collections.ConfigDict(dict(
        kind="wan", path=str(folder), transformer_path="", guidance_scale=5.0, negative_prompt="blurry",
        max_sequence_length=16, dtype="", remat="none", vae_remat="full", attention="auto", architecture={},
        **SIZE) | overrides)


@pytest.fixture(scope="module")
def opened(wan_train_folder):
    folder = wan_train_folder
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    gen = genlib.open_generator(section(folder), mesh, sharding.DEFAULT_RULES)
    params = gen.initial_params(mesh, sharding.DEFAULT_RULES)
    return folder, mesh, gen, params


def test_open_wan_real_and_abstract_agree(opened):
    folder, mesh, gen, _ = opened
    abstract = genlib.open_generator(section(folder), mesh, sharding.DEFAULT_RULES, abstract=True)
    assert gen.kind == abstract.kind == "wan"
    assert gen.image_shape == abstract.image_shape == (5, 32, 16, 3)           # a clip: [F, H, W, 3]
    assert gen.latent_shape == abstract.latent_shape == (4, 2, 8, 4)           # [z, 1 + (F-1)/4, H/4, W/4]
    assert gen.schedule.shift == 3.0 and not gen.schedule.use_dynamic_shifting  # the folder's flow_shift
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    assert shapes(gen.frozen) == shapes(abstract.frozen)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract.frozen))
    assert set(gen.tokenize(["a cat"])) == set(abstract.tokenize(["a cat"])) == {"ids", "mask"}
    tokens = gen.tokenize(["a cat"])             # no pretraining caption dropout to repeat in the anchor
    assert gen.drop_captions(tokens, jax.random.key(0), np.arange(1)) is tokens


def test_decode_and_encode_clips(opened):
    _, _, gen, _ = opened
    latents = jax.random.normal(jax.random.key(0), (2, *gen.latent_shape))

    def round_trip(frozen, latents):
        clips = gen.decode(frozen, latents)
        return clips, gen.encode(frozen, jnp.round(clips * 255).astype(jnp.uint8))
    clips, encoded = run_once(round_trip, gen.frozen, latents)
    assert clips.shape == (2, 5, 32, 16, 3) and 0.0 <= float(clips.min()) and float(clips.max()) <= 1.0
    assert encoded.shape == (2, *gen.latent_shape) and bool(jnp.isfinite(encoded).all())


def test_velocity_is_wans_classifier_free_guidance(opened):
    """Guided: v_neg + 5 (v_pos - v_neg) with the negative prompt's UMT5 states; unguided (what
    the flow-matching losses fit): the prompt's velocity alone, timestep 1000 t."""
    _, mesh, gen, params = opened
    graphdef = sharding.sharded_shapes(gen.make_model, mesh, sharding.DEFAULT_RULES)[0]
    x = jax.random.normal(jax.random.key(1), (2, *gen.latent_shape))

    def velocities(params, frozen, tokens, x):
        model = nnx.merge(graphdef, params)
        cond = gen.condition(model, frozen, tokens)
        v_pos = model(x, jnp.full((2,), 300.0), cond["text"])
        v_neg = model(x, jnp.full((2,), 300.0), jnp.repeat(cond["negative"], 2, axis=0))
        return v_pos, v_neg, gen.velocity(model, cond)(x, 0.3), gen.velocity(model, cond, guided=False)(x, 0.3)
    with jax.default_matmul_precision("highest"):
        v_pos, v_neg, guided, plain = run_once(velocities, params, gen.frozen,
                                               gen.tokenize(["a cat surfs", "a dog"]), x)
    np.testing.assert_allclose(plain, v_pos, atol=1e-5)
    np.testing.assert_allclose(guided, v_neg + 5.0 * (v_pos - v_neg), atol=1e-4)


def test_export_loads_back_in_diffusers_and_wan_sampler(opened, tmp_path):
    folder, _, gen, params = opened
    tuned = jax.tree.map(lambda x: np.asarray(x) + 0.01, params)     # as if fine-tuned
    out = gen.export(tuned, str(tmp_path / "export"))
    pipe = diffusers.WanPipeline.from_pretrained(out, transformer=_diffusers_load(tmp_path / "export" / "transformer"))
    want = nnx.to_pure_dict(nnx.state(WanSampler.from_pretrained(out).transformer, nnx.Param))
    got = jax.tree.map(np.asarray, tuned)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), b)
    base = _diffusers_load(folder / "transformer").state_dict()
    exported = pipe.transformer.state_dict()
    assert base.keys() == exported.keys()
    np.testing.assert_allclose(exported["proj_out.weight"].numpy(), base["proj_out.weight"].numpy() + 0.01, atol=1e-6)
    # A resumed run exports into the same folder again: its linked files are kept, stale ones replaced.
    stale = tmp_path / "export" / "vae" / "config.json"
    stale.unlink()
    stale.write_text("{}")
    assert gen.export(tuned, out) == out
    assert (folder / "vae" / "config.json").read_text() == stale.read_text()


def test_bad_inputs_fail_with_the_fix(opened):
    folder, mesh, _, _ = opened
    with pytest.raises(ValueError, match=r"num_frames 6 must be 4k\+1 .*try 5"):
        genlib.open_generator(section(folder, num_frames=6), mesh, sharding.DEFAULT_RULES, abstract=True)
    with pytest.raises(ValueError, match="generator.architecture is empty"):
        genlib.open_generator(section("/nowhere"), mesh, sharding.DEFAULT_RULES, abstract=True)
    with pytest.raises(ValueError, match="data.prompt_file is required"):
        genlib.open_generator(section(folder), mesh, sharding.DEFAULT_RULES, abstract=True).prompts(None)
