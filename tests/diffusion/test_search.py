"""Search with a verifier (rdance.diffusion.search) on the tiny random world generator: a verifier
that prefers a known property (redness) finds it more than plain sampling does, at the compute
the search reports; searches are deterministic for a seed; sharded rows give the same images."""
import numpy as np
import pytest
from flax import nnx

from rdance.core import sharding as sh
from rdance.diffusion.search import PairwiseAgainstBest, SearchConfig, Searcher, pointwise_verifier
from rdance.world.generator import WorldGenerator

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a red square and a blue circle",
           "three yellow circles", "a yellow triangle", "a red triangle", "a blue circle"]
STEPS = 6


def redness(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    return (x[..., 0] - 0.5 * (x[..., 1] + x[..., 2])).mean(axis=(1, 2))


def red_verifier(images, prompt_of):
    del prompt_of
    return redness(images)


@pytest.fixture(scope="module")
def world(gen_folder):
    gen = WorldGenerator.from_pretrained(gen_folder)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    return gen, graphdef, gen.initial_params(None, None), {}


def search(world, mesh=None, seed=0, verifier=red_verifier, **config):
    """One Searcher per generator (and mesh), as a sweep uses it: every setting shares its compiles."""
    gen, graphdef, params, searchers = world
    if mesh is not None:   # the generator (its frozen VAE) and its parameters on the mesh
        gen = WorldGenerator.from_pretrained(gen.folder, mesh, sh.DEFAULT_RULES)
        params = gen.initial_params(mesh, sh.DEFAULT_RULES)
    if mesh not in searchers:
        searchers[mesh] = Searcher(gen, graphdef, STEPS, mesh=mesh)
    searcher = searchers[mesh]
    return searcher(params, gen.frozen, PROMPTS, verifier if config.get("method", "none") != "none" else None,
                    seed=seed, config=SearchConfig(**config))


def test_the_verifier_finds_its_property_more_than_plain_sampling_at_the_reported_compute(world):
    plain = search(world, method="none")
    best = search(world, method="best_of_n", n=4)
    paths = search(world, method="paths", n=2, m=2, start_step=3, forward_steps=1, backward_steps=2)
    # Scores are the verifier's view of the returned images.
    np.testing.assert_allclose(best.scores, redness(best.images))
    np.testing.assert_allclose(paths.scores, redness(paths.images))
    assert np.isnan(plain.scores).all()
    # The tiny random generator (random VAE decoder) draws near-grey images whose redness varies
    # little with the noise (about 0.061 +- 0.001 here); the searches' picks are redder on average
    # and search over paths is redder for every prompt.
    base = redness(plain.images)
    assert best.scores.mean() > base.mean() and paths.scores.mean() > base.mean(), (best.scores, paths.scores, base)
    assert (paths.scores > base).mean() >= 0.75, (paths.scores, base)
    # Compute: plain sampling is 1x; best-of-4 is 4x; paths: 2 paths x 3 steps, then rounds from
    # step 3: 3->2->4, 4->3->5, 5->4->6 (3 rounds of 4 candidates x 2 steps).
    assert (plain.nfe_per_prompt, plain.sampling_units, plain.rounds) == (STEPS, 1.0, 0)
    assert (best.nfe_per_prompt, best.sampling_units, best.rounds) == (4 * STEPS, 4.0, 1)
    assert best.verifier_images == 4 * len(PROMPTS)
    assert paths.nfe_per_prompt == 2 * 3 + 3 * 4 * 2 and paths.rounds == 3
    assert paths.verifier_images == 3 * 4 * len(PROMPTS)
    assert paths.images.shape == (len(PROMPTS), 32, 32, 3) and paths.images.dtype == np.uint8
    # The plan agrees with what was spent.
    for result, config in ((plain, SearchConfig()), (best, SearchConfig(method="best_of_n", n=4)),
                           (paths, SearchConfig(method="paths", n=2, m=2, start_step=3))):
        assert config.nfe_per_prompt(STEPS) == result.nfe_per_prompt


def test_a_search_is_deterministic_for_a_seed(world):
    config = dict(method="paths", n=2, m=2, start_step=4, forward_steps=1, backward_steps=2)
    a, b, c = search(world, **config), search(world, **config), search(world, seed=1, **config)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_rows_split_over_the_mesh_give_the_same_images(world, devices):
    config = dict(method="best_of_n", n=2)
    alone = search(world, **config)
    mesh = sh.make_mesh((8, 1, 1), devices)   # 16 rows over 8 data-parallel devices
    sharded = search(world, mesh=mesh, **config)
    assert np.abs(alone.images.astype(int) - sharded.images.astype(int)).max() <= 1


def test_pairwise_verifier_scores_against_the_running_best(world):
    def score_pairwise(references, images, prompts):
        assert len(prompts) == len(images) == len(references)
        return 1.0 / (1.0 + np.exp(-50.0 * (redness(images) - redness(references))))
    pairwise = PairwiseAgainstBest(score_pairwise, PROMPTS)
    best = search(world, method="best_of_n", n=4, verifier=pairwise)
    pointwise = search(world, method="best_of_n", n=4)
    # Against one reference per prompt, the order of P(beats it) is the order of redness.
    np.testing.assert_array_equal(best.images, pointwise.images)
    assert set(pairwise.best) == set(range(len(PROMPTS)))


def test_pointwise_verifier_passes_each_rows_prompt():
    seen = []

    def score_pointwise(images, prompts, criteria):
        seen.append((list(prompts), criteria))
        return np.arange(len(images), dtype=np.float64)
    verify = pointwise_verifier(score_pointwise, ["a", "b"], criteria="alignment")
    scores = verify(np.zeros((3, 4, 4, 3), np.uint8), np.array([1, 0, 1]))
    np.testing.assert_array_equal(scores, [0, 1, 2])
    assert seen == [(["b", "a", "b"], "alignment")]


@pytest.mark.parametrize("config, message", [
    (dict(method="beam"), "use one of"),
    (dict(method="best_of_n", n=0), "n=0"),
    (dict(method="paths", forward_steps=2, backward_steps=2), "forward_steps < backward_steps"),
    (dict(method="paths", start_step=STEPS), "start_step=6"),
    (dict(method="paths", m=0), "m=0"),
])
def test_bad_search_settings_are_named(world, config, message):
    with pytest.raises(ValueError, match=message):
        search(world, **config)


def test_a_verifier_that_returns_the_wrong_shape_is_named(world):
    with pytest.raises(ValueError, match="one finite score per image"):
        search(world, method="best_of_n", n=2, verifier=lambda images, prompt_of: np.zeros(3))
