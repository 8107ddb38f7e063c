import numpy as np
import pytest

from rdance.world import judge, render

from rdance.world import render_variant
from rdance.world.judge import check_rates
from rdance.world.pairs import PreferencePairs
from rdance.world.prompts import Scene, ObjectSpec, prompt_set
from rdance.world.render import MISTAKES, possible_mistakes


@pytest.fixture(scope="module")
def scenes():
    return prompt_set(seed=123, size=150)


def test_prompts_are_deterministic_and_varied(scenes):
    assert [s.prompt for s in scenes] == [s.prompt for s in prompt_set(seed=123, size=150)]
    assert {s.kind for s in scenes} == {"single", "count", "pair", "relation"}
    assert Scene((ObjectSpec("red", "circle", 2),)).prompt == "two red circles"
    assert Scene((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "left of").prompt == \
        "a red circle left of a blue square"


@pytest.mark.parametrize("size", [32, 64])
def test_judge_passes_every_faithful_render(scenes, size):
    for i, scene in enumerate(scenes):
        verdict = judge(render(scene, size, np.random.default_rng(i)), scene)
        assert verdict.score == 1.0, (scene.prompt, verdict.checks)


def test_judge_catches_every_kind_of_mistake(scenes):
    seen = set()
    for i, scene in enumerate(scenes):
        for mistake in possible_mistakes(scene):
            verdict = judge(render_variant(scene, mistake, 32, np.random.default_rng(i)), scene)
            assert verdict.score < 1.0, (scene.prompt, mistake, verdict.checks)
            seen.add(mistake)
    assert seen == set(MISTAKES)


def test_check_rates_tell_a_wrong_shape_from_a_missing_object():
    scene = Scene((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "left of")
    rng = np.random.default_rng(0)
    faithful = judge(render(scene, 32, rng), scene)
    wrong_shape = judge(render_variant(scene, "shape", 32, rng), scene)
    missing = judge(render_variant(scene, "missing", 32, rng), scene)
    assert faithful.kinds == ("present", "count", "present", "count", "relation")
    assert check_rates([faithful]) == {"present": 1.0, "count": 1.0, "relation": 1.0, "colour_found": 1.0,
                                       "shape_given_colour": 1.0}
    # One group drawn in another shape: its colour is there, the judge does not see it.
    rates = check_rates([wrong_shape])
    assert rates["colour_found"] == 1.0 and rates["present"] == 0.5 and rates["shape_given_colour"] == 0.5
    # One group left out: neither its colour nor the object is there.
    rates = check_rates([missing])
    assert rates["colour_found"] == 0.5 and rates["present"] == 0.5 and rates["shape_given_colour"] == 1.0
    # Rates pool checks over images; a kind no prompt asks for is left out.
    single = Scene((ObjectSpec("green", "triangle"),))
    rates = check_rates([faithful, wrong_shape, judge(render(single, 32, rng), single)])
    assert "relation" in rates and rates["present"] == pytest.approx(4 / 5)
    assert "relation" not in check_rates([judge(render(single, 32, rng), single)])


def test_judge_reads_blurred_noisy_images():
    """Generated samples are soft and noisy; the judge must still see the objects."""
    from scipy import ndimage
    scene = Scene((ObjectSpec("green", "triangle"), ObjectSpec("red", "square")), "above")
    image = render(scene, 64, np.random.default_rng(0)).astype(np.float32)
    image = ndimage.gaussian_filter(image, sigma=(0.7, 0.7, 0))
    image += np.random.default_rng(1).normal(0, 12, image.shape)
    assert judge(np.clip(image, 0, 255).astype(np.uint8), scene).score == 1.0


def test_judge_accepts_float_images_and_rejects_bad_shapes():
    scene = Scene((ObjectSpec("blue", "circle"),))
    image = render(scene, 32)
    assert judge(image.astype(np.float32) / 255.0, scene).score == 1.0
    with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
        judge(image[..., 0], scene)


def test_pairs_are_labelled_by_the_judge_with_configured_noise():
    clean = PreferencePairs(300, seed=5, size=32, label_noise=0.0)
    noisy = PreferencePairs(300, seed=5, size=32, label_noise=0.2)
    flips = 0
    for i in range(len(clean)):
        a, b = clean[i], noisy[i]
        assert a.prompt == b.prompt and all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
        scene_scores = [judge(im, _scene_of(a.prompt, i)).score for im in a.images]
        assert scene_scores[a.label] > scene_scores[1 - a.label]
        assert "{preferred}" in a.rationale and "{other} fails" in a.rationale
        flips += a.label != b.label
    assert 0.12 < flips / len(clean) < 0.28
    with pytest.raises(ValueError, match="label_noise"):
        PreferencePairs(10, seed=0, label_noise=0.7)


def _scene_of(prompt, index):
    from rdance.world.prompts import sample_scene
    rng = np.random.default_rng([5, index])
    scene = sample_scene(rng)
    assert scene.prompt == prompt
    return scene


def test_clean_share_sets_faithful_renders_against_near_misses():
    pairs = PreferencePairs(200, seed=8, clean_share=1.0)
    for i in range(40):
        record = pairs[i]
        scene = _scene_of_seed(record.prompt, i, 8)
        scores = sorted(judge(im, scene).score for im in record.images)
        assert scores[1] == 1.0 and scores[0] < 1.0
    with pytest.raises(ValueError, match="clean_share"):
        PreferencePairs(1, seed=0, clean_share=1.5)


def test_mistake_weights_draw_the_near_misses_asked_for():
    weights = dict(colour=0.0, count=0.0, missing=0.0, relation=0.0, shape=1.0)
    pairs = PreferencePairs(200, seed=8, clean_share=1.0, mistake_weights=weights)
    for i in range(30):
        record = pairs[i]
        scene = _scene_of_seed(record.prompt, i, 8)
        worse = min(record.images, key=lambda im: judge(im, scene).score)
        found = judge(worse, scene).detections
        # A shape mistake keeps every colour and count, and shows a shape the prompt does not ask for.
        assert sorted(d.colour for d in found) == sorted(o.colour for o in scene.objects for _ in range(o.count))
        asked = {(o.colour, o.shape) for o in scene.objects}
        assert any((d.colour, d.shape) not in asked for d in found)
    uniform = PreferencePairs(200, seed=8, clean_share=1.0)
    assert [uniform[i].prompt for i in range(10)] == [pairs[i].prompt for i in range(10)]
    for bad, match in ((dict(blur=1.0), "unknown mistakes"), (dict(shape=-1.0), ">= 0"),
                       (dict.fromkeys(MISTAKES, 0.0), "at least one")):
        with pytest.raises(ValueError, match=match):
            PreferencePairs(1, seed=0, mistake_weights=bad)


def test_captions_describe_what_was_drawn():
    from rdance.world.pairs import WorldCaptions
    captions = WorldCaptions(30, seed=1)
    for i in range(30):
        record = captions[i]
        assert record.kind == "point" and record.label == 1 and record.prompt
        assert record.images[0].shape == (32, 32, 3)
    assert len({captions[i].prompt for i in range(30)}) > 20


def test_grounding_questions_ask_about_a_prompt_drawn_or_missed():
    from rdance.world.pairs import WorldCaptions
    source = WorldCaptions(60, seed=2, question_share=1.0)
    labels = []
    for i in range(60):
        record = source[i]
        assert record.criteria == WorldCaptions.QUESTION and record.kind == "point"
        score = judge(record.images[0], _scene_of_seed(record.prompt, i, 2)).score
        assert (score == 1.0) == (record.label == 1), (i, record.prompt, score)
        labels.append(record.label)
    assert 15 < sum(labels) < 45


def _scene_of_seed(prompt, index, seed):
    from rdance.world.prompts import sample_scene
    scene = sample_scene(np.random.default_rng([seed, index]))
    assert scene.prompt == prompt
    return scene
