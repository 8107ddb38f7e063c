"""The reward-training forward: pairwise rows encode each image once and equal the plain forward."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import rm_smoke
from rdance.reward.model import to_pixels
from rdance.reward.task import forward_rows, make_loss_fn
from rdance.reward.recipe import RewardTraining
from rdance.world.vlm import world_corpus


def tiny_task(tmp_path):
    config = rm_smoke.get_config()
    config.model.update(patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                        text_layers=1, text_heads=2, text_kv_heads=1)
    config.data.eval_sets = ""
    return RewardTraining.from_config(config, str(tmp_path), corpus=world_corpus)


def test_pairwise_rows_encode_each_image_once_with_the_plain_forwards_numbers(tmp_path):
    task = tiny_task(tmp_path)
    builder, spec = task.builder, task.loss_spec
    rows = [builder(task.source[i]) for i in range(3)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    assert batch["images"].shape[:2] == (3, 4)  # A, B, B, A per record
    np.testing.assert_array_equal(batch["images"][:, 2:], batch["images"][:, 1::-1])

    def plain(net):  # every row's two images through the vision tower, as scoring does
        ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
        pixels = to_pixels(batch["images"].reshape(-1, 32, 32, 3), spec.image_size, spec.max_tiles)
        return net.hidden(ids, pixels, batch["attention_mask"].reshape(ids.shape))

    net = task.make_model()
    # Jitted: op by op, the backward pass compiles hundreds of small programs.
    np.testing.assert_allclose(nnx.jit(lambda n: forward_rows(n, batch, spec))(net), nnx.jit(plain)(net), rtol=1e-5, atol=1e-5)
    # An image's gradient sums over both rows that show it, as in the plain forward.
    readout = lambda hidden: jnp.sum(jnp.sin(hidden[:, spec.answer_col:]))
    fast_grads = nnx.jit(nnx.grad(lambda n: readout(forward_rows(n, batch, spec))))(net)
    plain_grads = nnx.jit(nnx.grad(lambda n: readout(plain(n))))(net)
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6)   # jitted: fused sums reassociate


def test_caption_metrics_read_the_first_answer_token_as_a_grounding_questions_yes_or_no(tmp_path):
    """On a set of grounding questions, first_token_accuracy is the share of rows whose yes/no
    the model's argmax gets right; token_accuracy also counts the tokens after it."""
    config = rm_smoke.get_config()
    config.model.update(patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                        text_layers=1, text_heads=2, text_kv_heads=1)
    config.rm.update(paradigm="caption", max_prompt_tokens=64, max_answer_tokens=8)
    config.data.update(train="world_clip_captions:direction", eval_sets="", clip_frames=2)
    task = RewardTraining.from_config(config, str(tmp_path), corpus=world_corpus)
    rows = [task.builder(task.source[i]) for i in range(6)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    spec, net = task.loss_spec, task.make_model()
    first = np.asarray(batch["targets"]).reshape(6, -1)[:, spec.answer_col]
    assert set(first) <= {spec.yes_id, spec.no_id} and len(set(first)) == 2
    hidden = nnx.jit(lambda n: forward_rows(n, batch, spec))(net)
    predicted = np.asarray(jnp.argmax(net.logits(hidden[:, spec.answer_col]), -1))
    # An untrained model's argmax is rarely yes or no: make the first three rows' targets what it
    # predicts, so the accuracy to find is at least 1/2 and not 0 by chance.
    targets = np.asarray(batch["targets"]).reshape(6, -1).copy()
    targets[:3, spec.answer_col] = predicted[:3]
    batch["targets"] = jnp.asarray(targets.reshape(batch["targets"].shape))
    _, metrics = nnx.jit(lambda n: make_loss_fn(spec)(n, batch, None))(net)
    expected = np.mean(predicted == targets[:, spec.answer_col])
    assert expected >= 0.5
    np.testing.assert_allclose(metrics["first_token_accuracy"], expected, atol=1e-6)
    assert metrics["token_accuracy"] != metrics["first_token_accuracy"]


def test_vision_position_init_std_draws_a_from_scratch_towers_positions_and_is_checked(tmp_path):
    """0 keeps transformers' zeros; a spread draws normal(std) rows, the same for the same seed;
    a bad value names the field."""
    import pytest
    from rdance.reward.recipe import vision_position_init_std

    def positions(std, seed=0):
        config = rm_smoke.get_config()
        config.model.update(patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
                            text_layers=1, text_heads=2, text_kv_heads=1, vision_position_init_std=std)
        config.data.eval_sets, config.seed = "", seed
        task = RewardTraining.from_config(config, str(tmp_path / f"{std}_{seed}"), corpus=world_corpus)
        return np.asarray(task.make_model().vlm.vision.position_embeddings[...])

    assert not positions(0.0).any()
    drawn = positions(0.5)
    assert drawn.shape == (17, 32) and 0.4 < drawn.std() < 0.6
    np.testing.assert_array_equal(drawn, positions(0.5))
    assert not np.array_equal(drawn, positions(0.5, seed=1))
    for bad in (-1.0, "big", True):
        with pytest.raises(ValueError, match="model.vision_position_init_std"):
            vision_position_init_std({"vision_position_init_std": bad})
