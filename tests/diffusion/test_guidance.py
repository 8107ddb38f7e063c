"""Classifier-free guidance of the world generator: caption dropout in training, guided sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rdance.core import sharding
from rdance.diffusion import generator as genlib
from rdance.world.generator import WorldGenerator
from rdance.world.generator import open_folder_sampler
from tests.conftest import TINY_GENERATOR

pytest.importorskip("transformers")   # the word tokenizer's files load through AutoTokenizer


def make(tmp_path, **sizes):
    """A tiny generator and its model, with every parameter jittered: FLUX's zero-initialised
    modulations would otherwise make the prompt all but irrelevant at init."""
    folder = str(tmp_path / "tokenizer")
    WorldGenerator.write_tokenizer(folder)
    gen = WorldGenerator.create(dict(TINY_GENERATOR, **sizes), folder, seed=0)
    graphdef, params = nnx.split(gen.make_model(), nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    params = jax.tree.unflatten(treedef, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return gen, nnx.merge(graphdef, params)


def test_guided_velocity_extrapolates_from_the_empty_caption(tmp_path):
    gen, model = make(tmp_path, caption_dropout=0.1, guidance_scale=3.0)
    tokens = gen.tokenize(["a red square", "two blue circles"])
    empty = gen.tokenize(["", ""])
    assert not empty["mask"].any()
    x = jax.random.normal(jax.random.key(0), (2, *gen.latent_shape))
    t = jnp.array([0.3, 0.7])
    cond = gen.condition(model, {}, tokens)
    v_prompt = gen.velocity(model, cond, guided=False)(x, t)
    v_empty = gen.velocity(model, gen.condition(model, {}, empty), guided=False)(x, t)
    np.testing.assert_allclose(gen.velocity(model, cond)(x, t), v_empty + 3.0 * (v_prompt - v_empty),
                               rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(v_prompt - v_empty).mean()) > 0.005   # the prompt matters, so the test can fail

    # Scale 1 is the plain velocity, and flow-matching losses never guide.
    plain, _ = make(tmp_path, caption_dropout=0.1)
    np.testing.assert_array_equal(plain.velocity(model, plain.condition(model, {}, tokens))(x, t), v_prompt)
    x0 = gen.encode(gen.frozen, np.zeros((2, 32, 32, 3), np.uint8))
    ids = jnp.arange(2)
    np.testing.assert_array_equal(genlib.flow_matching_loss(gen, model, cond, x0, jax.random.key(1), ids),
                                  genlib.flow_matching_loss(plain, model, cond, x0, jax.random.key(1), ids))


def test_caption_dropout_empties_a_fraction_of_rows_by_id(tmp_path):
    gen, _ = make(tmp_path, caption_dropout=0.25)
    tokens = gen.tokenize(["a red square"] * 2000)
    ids = jnp.arange(2000)
    dropped = gen.drop_captions(tokens, jax.random.key(3), ids)
    empty = ~np.asarray(dropped["mask"]).any(1)
    assert 0.22 < empty.mean() < 0.28
    np.testing.assert_array_equal(np.asarray(dropped["ids"])[empty], gen.tokenizer.pad_token_id)
    np.testing.assert_array_equal(np.asarray(dropped["ids"])[~empty], tokens["ids"][~empty])
    # A row's fate depends on its id only, not on where it sits in the batch.
    again = gen.drop_captions({k: v[::-1] for k, v in tokens.items()}, jax.random.key(3), ids[::-1])
    np.testing.assert_array_equal(~np.asarray(again["mask"]).any(1), empty[::-1])
    none, _ = make(tmp_path)
    assert none.drop_captions(tokens, jax.random.key(3), ids) is tokens


def test_guidance_settings_are_checked_and_travel_with_the_export(tmp_path):
    with pytest.raises(ValueError, match="caption dropout"):
        make(tmp_path, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"caption_dropout 1.0 must be in \[0, 1\)"):
        make(tmp_path, caption_dropout=1.0)
    gen, model = make(tmp_path, caption_dropout=0.1, guidance_scale=3.0)
    folder = gen.export(nnx.to_pure_dict(nnx.state(model, nnx.Param)), str(tmp_path / "export"))
    assert WorldGenerator.from_pretrained(folder).cfg.guidance_scale == 3.0
    # judge_generators --guidance_scale overrides the folder's own scale.
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    opened, sampler, params = open_folder_sampler(folder, mesh, sharding.DEFAULT_RULES, 2, 2, 0, guidance_scale=1.5)
    assert opened.cfg.guidance_scale == 1.5
    assert sampler(params, opened.frozen, opened.tokenize(["a red square"]), [0]).shape == (1, 32, 32, 3)
