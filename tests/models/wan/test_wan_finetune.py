"""The fine-tuning loop with a Wan generator (kind 'wan') on the session's tiny random WanPipeline
folder (5 frames of 32x16) and tiny random reward models that see 3 of the 5 frames: ReFL against
Best-of-N reference clips with a pairwise RM, and RWR with a pointwise RM, one step each, as
``rdance.run.finetune`` runs them; the bad configs that fail before anything compiles."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from experiments import finetune_wan  # noqa: E402
from rdance.core import sharding  # noqa: E402
from rdance.train.finetune_data import FinetuneExamples  # noqa: E402
from rdance.train.finetune_setup import build, compiler_options  # noqa: E402
from rdance.train.generator_eval import place  # noqa: E402
from rdance.train.loop import batch_spec  # noqa: E402
from tests.conftest import make_rm_folder  # noqa: E402
from tests.train.conftest import TINY  # noqa: E402

PROMPTS = ["one red circle", "two blue squares", "a green triangle", "one yellow star"]
RM_FRAMES = 3


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    """{paradigm: folder} of tiny RMs that see RM_FRAMES frames of each clip."""
    return {p: make_rm_folder(tmp_path_factory.mktemp(f"rm_{p}"), p, video_frames=RM_FRAMES,
                              video_sampling="uniform") for p in ("pairwise", "pointwise")}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


def tiny_config(folder, rm, prompt_file, **overrides):
    """experiments/finetune_wan.py on the tiny folders: 5 frames of 32x16, 4 Euler steps."""
    c = finetune_wan.get_config("1.3b")
    c.generator.update(dict(path=str(folder), architecture={}, num_frames=5, height=32, width=16,
                            max_sequence_length=16, dtype=""))
    c.reward.update(dict(path=rm, architecture={}, dtype="float32", remat="none"))
    values = {**TINY, "data.prompt_file": prompt_file, "data.eval_prompts": 2, "data.global_batch_size": 2,
              "optim.grad_accum_steps": 1, "bank.chunk": 2, "monitor.eval_chunk": 2, "monitor.grid_size": 2,
              "monitor.grid_every": 1, "monitor.grid_columns": 1, "sampler.t_sampling": "uniform",
              "train.steps": 1, "train.async_checkpoints": False, "export.use_ema": False,
              "mesh.shape": (1, 1, 1), **overrides}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def _batch(setup, prompts, config):
    """A global batch of the loop's examples (FinetuneExamples; references: random clips), on the
    host and as the sharded structs the step is lowered for."""
    gen, rm, pairwise = setup.gen, setup.rm, setup.paradigm == "pairwise"
    refs = None
    if pairwise:
        refs = np.random.default_rng(0).integers(0, 256, (len(prompts), 1, *gen.image_shape), dtype=np.uint8)
    rm_tokens = rm.tokens(prompts, gen.image_shape, pairwise=pairwise)
    source = FinetuneExamples(len(prompts), gen.tokenize(prompts), rm_tokens, refs, None, gen.tokenize)
    rows = [source[i] for i in range(config.data.global_batch_size)]
    local = jax.tree.map(lambda *xs: np.stack(xs), *rows)
    return local, batch_spec(local, setup.mesh)


@pytest.mark.parametrize("algo, paradigm", [("refl", "pairwise"), ("rwr", "pointwise")])
def test_one_step_of_the_loop_trains_the_transformer(wan_train_folder, rms, prompt_file, devices, algo, paradigm):
    """The loop's step (finetune_setup.build, as finetune builds it) on clips: finite loss, and a
    gradient that reaches the transformer (every update lands in its parameters)."""
    # Guidance (a second transformer pass) is tested in test_wan_generator; here it would only
    # lengthen the compile.
    config = tiny_config(wan_train_folder, rms[paradigm], prompt_file, algo=algo, **{"generator.guidance_scale": 1.0})
    mesh = sharding.make_mesh(config.mesh.shape, devices[:1])
    setup = build(config, mesh, config.mesh.rules)
    local, spec = _batch(setup, PROMPTS, config)
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(setup.trainable)
    before = jax.tree.map(np.asarray, state.params)
    step = setup.lower(spec).compile(compiler_options=compiler_options(config.train.compiler_options))
    state, metrics = step(state, jax.tree.map(lambda x: place(x, mesh), local), setup.frozen, setup.rm.params)
    metrics = {k: float(v) for k, v in metrics.items()}
    print(algo, paradigm, {k: metrics[k] for k in ("loss", "grad_norm", "reward/mean")})
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0 and metrics["finite"]
    moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert moved["blocks"]["attn1"]["to_q"]["kernel"] and moved["proj_out"]["kernel"]


def test_a_reward_model_seeing_more_frames_than_a_clip_has_fails_before_compiling(wan_train_folder, rms, prompt_file,
                                                                                  devices):
    config = tiny_config(wan_train_folder, rms["pairwise"], prompt_file, **{"generator.num_frames": 1})
    mesh = sharding.make_mesh(config.mesh.shape, devices[:1])
    with pytest.raises(ValueError, match=r"sees rm.video_frames=3 frames of each clip \(uniform\) but the generator "
                                         r"makes 1 frames of 32x16: raise generator.num_frames"):
        build(config, mesh, config.mesh.rules, abstract=True)
