"""The fine-tuning step's maths: the ReFL gradient against a finite difference, and a sharded
run against a one-device run."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding as sh
from rdance.world.prompts import prompt_set
from rdance.world.render import render
from rdance.diffusion import generator as genlib
from rdance.diffusion.sampler import euler_step, sample
from rdance.world.generator import WorldGenerator
from rdance.reward.api import RewardModel
from rdance.train.finetune_loop import finetune
from rdance.train.finetune_step import StepSettings, make_micro, step_keys
from rdance.train.host import to_host
from tests.conftest import curve
from tests.train.conftest import REFERENCE, tiny_config


def test_refl_gradient_matches_a_finite_difference(gen_folder, rm_folder, devices):
    """ReFL's gradient is that of the one-step reward with the gradient-free rollout held fixed:
    r(decode(x_k - t_k v_theta(x_k))) differentiated through the RM and the decoder (the frozen VAE
    of the world generator)."""
    mesh = sh.make_mesh((1, 1, 1), devices[:1])
    gen = WorldGenerator.from_pretrained(gen_folder)
    rm = RewardModel.from_pretrained(rm_folder, mesh=mesh)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    params = gen.initial_params(mesh, sh.DEFAULT_RULES)
    s = StepSettings(algo="refl", num_steps=4, window=2, samples_per_prompt=2, reward_scale=3.0)
    scenes = prompt_set(5, 3)
    prompts = [scene.prompt for scene in scenes]
    refs = np.stack([render(scene, 32, np.random.default_rng(i)) for i, scene in enumerate(scenes)])[:, None]
    mb = {"gen": gen.tokenize(prompts), "rm": rm.tokens(prompts, gen.image_shape, pairwise=True), "refs": refs}
    rows, ids = jnp.arange(3), jnp.arange(6)
    keys, k = step_keys(jax.random.key(0)), 2
    micro = make_micro(gen, graphdef, rm.pairwise_fn, s, mesh)
    loss, aux, grads = jax.jit(micro)(params, gen.frozen, rm.params, mb, rows, ids, keys, k)

    # The same computation written out: k gradient-free steps from the same noise, then one step.
    sig = genlib.sigmas(gen, s.num_steps)
    noise = genlib.per_sample_normal(keys["noise"], ids, gen.latent_shape)
    repeat = lambda tree: jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), 2, axis=0), tree)  # noqa: E731

    @jax.jit
    def rollout(p):
        model = nnx.merge(graphdef, p)
        return sample(gen.velocity(model, gen.condition(model, {}, repeat(mb["gen"]))), noise, sig[: k + 1])
    x_k = rollout(params)

    @jax.jit
    def one_step_loss(p):
        model = nnx.merge(graphdef, p)
        velocity = gen.velocity(model, gen.condition(model, {}, repeat(mb["gen"])))
        _, x0 = euler_step(velocity, x_k, sig[k], sig[k + 1])
        reward = rm.pairwise_fn(rm.params, repeat(mb["rm"]), repeat(refs[:, 0]), gen.decode(gen.frozen, x0))
        return -s.reward_scale * jnp.mean(reward)

    np.testing.assert_allclose(float(one_step_loss(params)), float(loss), rtol=1e-5)
    np.testing.assert_allclose(-float(loss) / s.reward_scale, float(aux["reward"].mean()), rtol=1e-5)
    assert float(jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))) > 1e-5
    # Along the gradient (the largest change, so float32 resolves it) and along a random direction.
    g_norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
    along = jax.tree.map(lambda g: g / g_norm, grads)
    leaves, treedef = jax.tree.flatten(grads)
    random = treedef.unflatten([jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)])
    r_norm = jnp.sqrt(sum(jnp.vdot(r, r) for r in jax.tree.leaves(random)))
    random = jax.tree.map(lambda r: r / r_norm, random)
    for direction, eps, rtol in ((along, 0.05, 5e-3), (jax.tree.map(lambda a, r: (a + r) / 2, along, random), 0.05, 1e-2)):
        shifted = lambda sign: jax.tree.map(lambda p, d: p + sign * eps * d, params, direction)  # noqa: E731
        finite = (one_step_loss(shifted(1)) - one_step_loss(shifted(-1))) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        np.testing.assert_allclose(float(analytic), float(finite), rtol=rtol)
    # The reward's gradient reaches the text encoder as well as the transformer.
    for part in ("text", "transformer"):
        assert float(jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads[part])))) > 0


def test_sharded_run_equals_one_device_with_accumulation(tmp_path, reference_run, gen_folder, rm_folder, devices):
    """One device in two accumulated micro-batches against the 8-device reference (data, FSDP and
    tensor parallel, one batch): the same bank, samples, rewards, gradients, evals and EMA."""
    one = tiny_config(gen_folder, rm_folder, **{**REFERENCE, "mesh.shape": (1, 1, 1), "optim.grad_accum_steps": 2})
    result = finetune(one, str(tmp_path), devices=devices[:1])
    with np.load(os.path.join(reference_run, "bank", "bank.npz")) as bank:
        np.testing.assert_array_equal(result.bank.chosen, bank["chosen"])
        np.testing.assert_allclose(result.bank.images, bank["images"], atol=1)
    for key in ("reward/mean", "reward/window_std", "loss", "grad_norm", "eval/judge"):
        np.testing.assert_allclose(curve(tmp_path, key), curve(reference_run, key), rtol=1e-4, atol=1e-7,
                                   err_msg=key)
    assert len(curve(tmp_path, "reward/mean")) == REFERENCE["train.steps"]
    assert curve(tmp_path, "grad_norm")[0] > 0
    exported = WorldGenerator.from_pretrained(os.path.join(reference_run, "export")).initial_params(None, None)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
                 to_host(result.state.ema), exported)


def test_anchor_trains_the_empty_caption_as_pretraining_did(gen_folder, devices):
    """With anchor.drop_captions, the anchor is pretraining's loss: rows drawn by caption dropout
    (keyed by row, as pretraining keys them by id) take the empty caption, so the unconditional
    velocity that guidance subtracts keeps being trained; without it, every row is captioned."""
    mesh = sh.make_mesh((1, 1, 1), devices[:1])
    gen = WorldGenerator.from_pretrained(gen_folder)
    gen.cfg = dataclasses.replace(gen.cfg, caption_dropout=0.5, guidance_scale=3.0)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    params = gen.initial_params(mesh, sh.DEFAULT_RULES)
    scenes = prompt_set(7, 8)
    images = np.stack([render(scene, 32, np.random.default_rng(i)) for i, scene in enumerate(scenes)])
    tokens = gen.tokenize([scene.prompt for scene in scenes])
    rows, keys = jnp.arange(8), step_keys(jax.random.key(3))
    dropped = gen.drop_captions(tokens, jax.random.fold_in(keys["anchor"], 2), rows)
    empty = np.asarray(dropped["mask"]).sum(axis=1) == 0
    assert 0 < empty.sum() < 8, empty                     # both kinds of row, so the test tells them apart

    def written_out(toks):
        model = nnx.merge(graphdef, params)
        x0 = gen.encode(gen.frozen, images)
        return jnp.mean(genlib.flow_matching_loss(gen, model, gen.condition(model, {}, toks), x0, keys["anchor"], rows))

    def anchor_of(drop):
        s = StepSettings(algo="refl", paradigm="pointwise", num_steps=4, window=2, reward_scale=0.0,
                         anchor_weight=1.0, anchor_drop_captions=drop)
        reward = lambda rm_params, tokens, images: jnp.zeros(images.shape[0])  # noqa: E731
        micro = make_micro(gen, graphdef, reward, s, mesh)
        mb = {"gen": tokens, "rm": {"ids": np.zeros((8, 1), np.int32)}, "anchor_image": images, "anchor_gen": tokens}
        _, aux, grads = jax.jit(micro)(params, gen.frozen, {}, mb, rows, jnp.arange(8), keys, 2)
        return float(aux["anchor_loss"]), np.asarray(grads["text"]["shared"]["embedding"])

    (with_drop, grads_drop), (without, grads_all) = anchor_of(True), anchor_of(False)
    np.testing.assert_allclose(with_drop, float(written_out(dropped)), rtol=1e-5)
    np.testing.assert_allclose(without, float(written_out(tokens)), rtol=1e-5)
    # A word only the dropped rows' captions hold gets no gradient when they are dropped.
    ids = np.asarray(tokens["ids"])
    only_dropped = set(ids[empty].ravel()) - set(ids[~empty].ravel())
    assert only_dropped
    for word in only_dropped:
        assert np.abs(grads_drop[word]).max() == 0 and np.abs(grads_all[word]).max() > 0
