"""Pretraining the world generator: it learns, its export loads back (and in transformers and
diffusers), and it writes judge-labelled pairs of its samples that train_reward can read."""
import jax
import numpy as np
import pytest
from flax import nnx

from experiments import gen_smoke
from rdance.core import sharding as sh
from rdance.data.records import JsonlRecords
from rdance.world.prompts import prompt_set
from rdance.world.autoencoder import train_vae
from rdance.world.generator import WorldGenerator, patchify, unpatchify
from rdance.run.pretrain_generator import make_evaluator, make_generator, make_task
from rdance.train.generator_eval import Sampler
from rdance.world.evaluate import JudgeEval, judge_scores
from rdance.train.host import to_host
from rdance.train.loop import train
from rdance.world.sampled_pairs import write_pairs
from tests.conftest import TINY_GENERATOR, curve

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def test_patchify_round_trip_and_layout():
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    tokens = patchify(images, 4)
    assert tokens.shape == (2, 4, 48)
    # Token 1 is the top-right patch, channel-major like FLUX's packing.
    np.testing.assert_array_equal(tokens[0, 1].reshape(3, 4, 4), images[0, :4, 4:].transpose(2, 0, 1))
    np.testing.assert_array_equal(unpatchify(tokens, 8, 4), images)


def test_recipe_generator_is_16_tokens_of_a_downsampling_4_vae(tmp_path):
    """gen_smoke's sizes as bench/results/world_generator.md measured them (shapes only)."""
    gen = make_generator(gen_smoke.get_config(), str(tmp_path))
    assert gen.cfg.vae_factor == 4 and gen.cfg.vae_pack == 2 and gen.latent_shape == (16, 32)


def test_pretraining_learns_exports_and_writes_pairs(tmp_path, devices):
    config = gen_smoke.get_config()
    config.model.update(TINY_GENERATOR)
    config.data.global_batch_size = 16
    config.optim.update(dict(learning_rate=3e-3, warmup_steps=0, schedule="constant"))
    config.eval.update(dict(prompts=8, num_steps=4, chunk=8))
    config.train.update(dict(steps=8, log_every=1, eval_every=8, checkpoint_every=8, async_checkpoints=False))
    workdir = str(tmp_path)
    config.vae.update(dict(steps=4, batch_size=8, log_every=2, eval_prompts=4))
    gen = make_generator(config, workdir)
    gen, _ = train_vae(gen, config.vae, workdir)
    task = make_task(config, gen)
    task.evaluate = make_evaluator(config, gen)
    result = train(config, workdir, task)
    losses = curve(workdir, "loss")
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert 0.0 <= curve(workdir, "eval/judge")[0] <= 1.0

    params = to_host(result.state.params)
    folder = gen.export(params, str(tmp_path / "export"))
    loaded = WorldGenerator.from_pretrained(folder)
    assert loaded.cfg == gen.cfg
    again = loaded.initial_params(None, None)
    jax.tree.map(np.testing.assert_array_equal, again, params)

    # The parts load in the reference libraries and compute what rdance computes.
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    model = nnx.merge(graphdef, again)
    tokens = gen.tokenize(["two red circles", "a blue square left of a green triangle"])
    ours = np.asarray(model.text(tokens["ids"], tokens["mask"]))
    t5 = transformers.T5EncoderModel.from_pretrained(f"{folder}/text_encoder").eval()
    with torch.no_grad():
        theirs = t5(torch.tensor(tokens["ids"], dtype=torch.long),
                    attention_mask=torch.tensor(tokens["mask"], dtype=torch.long)).last_hidden_state.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *gen.latent_shape)).astype(np.float32)
    pooled = ours.mean(1)
    v = np.asarray(model.transformer(hidden_states=x, encoder_hidden_states=ours, pooled_projections=pooled,
                                     timestep=np.array([0.3, 0.8], np.float32), img_ids=gen.img_ids,
                                     txt_ids=gen.txt_ids))
    flux = diffusers.FluxTransformer2DModel.from_pretrained(f"{folder}/transformer").eval()
    with torch.no_grad():
        ref = flux(hidden_states=torch.tensor(x), encoder_hidden_states=torch.tensor(ours),
                   pooled_projections=torch.tensor(pooled), timestep=torch.tensor([0.3, 0.8]),
                   img_ids=torch.tensor(gen.img_ids), txt_ids=torch.tensor(gen.txt_ids)).sample.numpy()
    np.testing.assert_allclose(v, ref, atol=1e-4)

    # Judge-labelled pairs of the generator's samples, readable as preference records.
    sampler = Sampler(gen, graphdef, sh.make_mesh((1, 1, 1), devices[:1]), 4, 8, 0)

    # The judge eval with two samples per prompt: sample 0 is the one-sample eval's image.
    scenes = prompt_set(5, 6)
    one, images_one = JudgeEval(sampler, gen, scenes)(params, gen.frozen)
    two, images_two = JudgeEval(sampler, gen, scenes, samples_per_prompt=2)(params, gen.frozen)
    np.testing.assert_array_equal(images_two[:6], images_one)
    assert images_two.shape[0] == 12 and not np.array_equal(images_two[6:], images_one)
    np.testing.assert_allclose(two["judge"], judge_scores(images_two, scenes * 2).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="at least one sample"):
        JudgeEval(sampler, gen, scenes, samples_per_prompt=0)
    counts = write_pairs(str(tmp_path / "pairs" / "train.jsonl"), sampler, params, gen, num_prompts=6,
                         samples_per_prompt=4, pairs_per_prompt=2, rendered_pairs=3, seed=0)
    records = JsonlRecords(str(tmp_path / "pairs" / "train.jsonl"))
    assert len(records) == counts["sample_pairs"] + 3
    record = records[0]
    assert record.images[0].shape == (32, 32, 3) and record.label in (0, 1) and record.prompt
