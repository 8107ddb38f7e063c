import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.world.pairs import PreferencePairs
from rdance.reward import losses
from rdance.reward.api import RewardModel
from tests.conftest import make_rm_folder


@pytest.fixture(scope="module")
def rm(rm_folder):
    return RewardModel.from_pretrained(rm_folder)


@pytest.fixture(scope="module")
def batch():
    pairs = PreferencePairs(3, seed=4)
    records = [pairs[i] for i in range(3)]
    return (np.stack([r.images[0] for r in records]), np.stack([r.images[1] for r in records]),
            [r.prompt for r in records])


def test_scores_are_probabilities_per_prompt(rm, batch):
    refs, images, prompts = batch
    p = rm.score_pairwise(refs, images, prompts)
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))
    # Batched equals one at a time.
    np.testing.assert_allclose(rm.score_pairwise(refs[1:2], images[1:2], prompts[1:2]), p[1:2], rtol=1e-5)
    q = rm.score_pointwise(images, prompts, criteria="aesthetics")
    assert q.shape == (3,) and np.all((q > 0) & (q < 1))


def test_pairwise_reward_is_differentiable_in_the_candidate(rm, batch):
    refs, images, prompts = batch
    tokens = rm.tokens(prompts, images.shape[1:], pairwise=True)
    x = jnp.asarray(images, jnp.float32) / 255.0
    with jax.default_matmul_precision("highest"):
        f = jax.jit(lambda x: rm.pairwise_fn(rm.params, tokens, refs, x).sum())
        grad = jax.grad(f)(x)
        direction = jax.random.normal(jax.random.key(0), x.shape)
        eps = 1e-2
        finite = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    analytic = jnp.vdot(grad, direction)
    assert abs(float(analytic)) > 1e-6
    np.testing.assert_allclose(float(analytic), float(finite), rtol=2e-2)


def test_full_softmax_reward_is_below_the_normalised_one(rm_folder, batch):
    refs, images, prompts = batch
    full = RewardModel.from_pretrained(rm_folder, normalise=False).score_pairwise(refs, images, prompts)
    normalised = RewardModel.from_pretrained(rm_folder).score_pairwise(refs, images, prompts)
    assert np.all(full < normalised)


def test_explain_generates_text(rm, batch):
    refs, images, prompts = batch
    texts = rm.explain(refs[:2], images[:2], prompts[:2], max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_regressive_rm_scores_with_its_head(tmp_path, batch):
    refs, images, prompts = batch
    rm = RewardModel.from_pretrained(make_rm_folder(tmp_path, "regressive"))
    scores = rm.score_pointwise(images, prompts)
    assert scores.shape == (3,) and np.ptp(scores) > 0


@pytest.mark.parametrize("bad, message", [
    (lambda r, i: (r[..., 0], i), r"reference_images must be \[batch, H, W, 3\]"),
    (lambda r, i: (r, i[:2]), "give one reference and one image of the same size per prompt"),
    (lambda r, i: (r.astype(np.int32), i), "must be uint8 or float"),
])
def test_bad_images_are_explained(rm, batch, bad, message):
    refs, images, prompts = batch
    with pytest.raises(ValueError, match=message):
        rm.score_pairwise(*bad(refs, images), prompts)


def test_losses():
    logits = jnp.zeros((2, 5)).at[0, 1].set(2.0)
    assert losses.p_yes(logits, 1, 2)[0] == pytest.approx(jax.nn.sigmoid(2.0))
    assert losses.p_yes(logits, 1, 2, normalise=False)[0] < losses.p_yes(logits, 1, 2)[0]
    assert float(losses.bradley_terry(jnp.array([5.0]), jnp.array([-5.0]))) < 1e-4
    loss, parts = losses.pointwise_generative(jnp.array([2.0]), jnp.array([-2.0]), 0.1)
    assert float(loss) == pytest.approx(float(parts["bt"] + 0.1 * parts["yes_no_ce"]))


def test_a_too_long_prompt_names_its_length_the_limit_and_the_setting(rm, batch):
    refs, images, _ = batch
    with pytest.raises(ValueError, match=r"^prompt 0 makes a \d+-token question \(prompt, criteria and image tokens\) "
                                         r"but this RM's max_prompt_tokens is 120; pass max_prompt_tokens=\d+ or more "
                                         r"to RewardModel.from_pretrained, or shorten the prompt$"):
        rm.score_pairwise(refs[:1], images[:1], [" ".join(["two red circles"] * 40)])
