"""The moving world: motion prompts, clips that stay in frame, the motion judge on right and wrong
clips, and judged clip pairs through the data registry and the JSONL format."""
import numpy as np
import pytest

from rdance.world.clip_pairs import CLIP_MISTAKES, ClipPairs, possible_clip_mistakes, render_clip_variant
from rdance.world.motion import MotionScene, motion_prompt_set, render_clip
from rdance.world.motion_judge import judge_clip
from rdance.world.prompts import ObjectSpec, Scene
from rdance.world.render import BACKGROUND

RED_CIRCLE = Scene((ObjectSpec("red", "circle"),))
BLUE_ABOVE_GREEN = Scene((ObjectSpec("blue", "square"), ObjectSpec("green", "triangle")), relation="above")


def test_prompts_say_the_motion():
    assert MotionScene(RED_CIRCLE, "left").prompt == "a red circle moving left"
    assert MotionScene(BLUE_ABOVE_GREEN, "down").prompt == "a blue square above a green triangle, moving down"
    assert MotionScene(Scene((ObjectSpec("green", "triangle"),)), "still").prompt == "a green triangle staying still"
    assert [s.prompt for s in motion_prompt_set(3, 5)] == [s.prompt for s in motion_prompt_set(3, 5)]
    with pytest.raises(ValueError, match="motion 'sideways'"):
        MotionScene(RED_CIRCLE, "sideways")


@pytest.mark.parametrize("size", [32, 64])
def test_clips_are_deterministic_and_keep_the_object_in_frame(size):
    for i, mscene in enumerate(motion_prompt_set(0, 12)):
        clip = render_clip(mscene, size, rng=np.random.default_rng(i))
        assert clip.shape == (8, size, size, 3) and clip.dtype == np.uint8
        np.testing.assert_array_equal(clip, render_clip(mscene, size, rng=np.random.default_rng(i)))
        border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]])
        assert (border == BACKGROUND).all(), mscene.prompt
        assert (clip[0] != clip[-1]).any() == (mscene.motion != "still"), mscene.prompt


def test_a_clip_moving_right_moves_right():
    clip = render_clip(MotionScene(RED_CIRCLE, "right"), 32, rng=np.random.default_rng(1))
    xs = [np.nonzero((frame == (220, 40, 40)).all(-1))[1].mean() for frame in clip]
    assert np.all(np.diff(xs) >= 0) and xs[-1] - xs[0] >= 32 / 6 - 1


def test_judge_scores_right_clips_high_and_each_mistake_low():
    scores = {m: [] for m in (None, *CLIP_MISTAKES, "shuffled")}
    for i, mscene in enumerate(motion_prompt_set(1, 24)):
        for mistake in (None, *possible_clip_mistakes(mscene)):
            scores[mistake].append(judge_clip(render_clip_variant(mscene, mistake, 32, rng=np.random.default_rng(i)),
                                              mscene).score)
        if mscene.motion != "still":
            clip = render_clip(mscene, 32, rng=np.random.default_rng(i))
            scores["shuffled"].append(judge_clip(clip[[3, 0, 6, 1, 7, 2, 5, 4]], mscene).direction)
    means = {m: np.mean(v) for m, v in scores.items()}
    assert means[None] >= 0.98 and np.median(scores[None]) == 1.0
    assert means["direction"] == 0.0 and means["static"] == 0.0 and means["shuffled"] == 0.0
    assert means["swap"] < 0.5 and means["vanish"] < 0.5 and means["colour"] < 0.2 and means["shape"] < 0.2


def test_judge_reports_its_parts():
    mscene = MotionScene(RED_CIRCLE, "left")
    right = judge_clip(render_clip(mscene, 32), mscene)
    assert right.score == 1.0 and right.parts() == {"per_frame": 1.0, "direction": 1.0, "persistence": 1.0}
    wrong = judge_clip(render_clip_variant(mscene, "direction", 32), mscene)
    assert wrong.parts() == {"per_frame": 1.0, "direction": 0.0, "persistence": 1.0}
    assert "the red circle is moving right, asked moving left" in [text for text, _ in wrong.checks]
    gone = judge_clip(render_clip_variant(mscene, "vanish", 32), mscene)
    assert gone.persistence == 0.5 and gone.per_frame == pytest.approx(0.5) and gone.score <= 0.25
    with pytest.raises(ValueError, match="expects a clip"):
        judge_clip(render_clip(mscene, 32)[0], mscene)


def test_clip_pairs_are_judged_and_noise_flips_labels():
    clean, noisy = ClipPairs(16, seed=0, frames=6), ClipPairs(16, seed=0, frames=6, label_noise=0.4)
    flips = 0
    for i in range(16):
        record = clean[i]
        assert record.images[0].shape == (6, 32, 32, 3) and record.kind == "pair"
        assert "moving" in record.prompt or "staying still" in record.prompt
        assert "{preferred}" in record.rationale
        flips += noisy[i].label != record.label
        np.testing.assert_array_equal(noisy[i].images[0], record.images[0])
    assert 1 <= flips <= 12


def drawn_mistakes(monkeypatch, source, n):
    """The near misses ``source``'s first ``n`` pairs rendered (None: a faithful clip)."""
    import rdance.world.clip_pairs as clip_pairs
    drawn, render = [], clip_pairs.render_clip_variant
    with monkeypatch.context() as patch:
        patch.setattr(clip_pairs, "render_clip_variant",
                      lambda mscene, mistake, *a: drawn.append(mistake) or render(mscene, mistake, *a))
        records = [source[i] for i in range(n)]
    return [m for m in drawn if m is not None], records


def test_clip_mistake_weights_draw_hard_negatives_for_training_only(monkeypatch):
    import ml_collections
    import rdance.world  # noqa: F401  (registers the world's sources)
    from rdance.data.registry import open_source
    uniform, _ = drawn_mistakes(monkeypatch, ClipPairs(60, seed=0, kinds=("single",), clean_share=1.0), 60)
    heavy, _ = drawn_mistakes(monkeypatch, ClipPairs(60, seed=0, kinds=("single",), clean_share=1.0,
                                                      mistake_weights={"shape": 10.0}), 60)
    assert uniform.count("shape") / len(uniform) < 0.35 and heavy.count("shape") / len(heavy) > 0.55
    # Weights that are all alike draw the same pairs as none.
    _, plain = drawn_mistakes(monkeypatch, ClipPairs(4, seed=0), 4)
    _, alike = drawn_mistakes(monkeypatch, ClipPairs(4, seed=0, mistake_weights={"shape": 1.0}), 4)
    for a, b in zip(plain, alike):
        np.testing.assert_array_equal(a.images[0], b.images[0])
    with pytest.raises(ValueError, match="unknown mistakes \\['missing'\\]"):
        ClipPairs(4, seed=0, mistake_weights={"missing": 2.0})
    data = ml_collections.ConfigDict(dict(image_size=32, clip_frames=4, clean_share=1.0,
                                          clip_mistake_weights=dict(shape=10.0)))
    train, _ = drawn_mistakes(monkeypatch, open_source("world_clips:single", data, seed=0, size=40, noise=0.0,
                                                       train=True), 40)
    held_out, _ = drawn_mistakes(monkeypatch, open_source("world_clips:single", data, seed=0, size=40, noise=0.0), 40)
    assert train.count("shape") > 2 * held_out.count("shape")


def test_world_clips_source_and_jsonl_round_trip(tmp_path):
    import ml_collections
    import rdance.world  # noqa: F401  (registers the world's sources)
    from rdance.data.records import JsonlRecords, write_jsonl
    from rdance.data.registry import open_source
    data = ml_collections.ConfigDict(dict(image_size=32, clip_frames=4, clean_share=1.0, skip_bad_records=False,
                                          allow_outside_paths=False))
    source = open_source("world_clips:single", data, seed=0, size=3, noise=0.0)
    assert len(source) == 3 and all(len(source[i].images[0]) == 4 for i in range(3))
    assert all(" and " not in source[i].prompt for i in range(3))
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        open_source("world_clips:count", data, seed=0, size=3, noise=0.0)
    write_jsonl([source[0]], str(tmp_path / "clips.jsonl"))
    back = JsonlRecords(str(tmp_path / "clips.jsonl"))[0]
    np.testing.assert_array_equal(back.images[1], source[0].images[1])


def test_a_still_vlm_learns_the_moving_worlds_words_only_when_asked():
    """A VLM pretrained on stills, that a clip RM will start from, needs 'moving', 'up', 'down'
    in its tokenizer (else they read as <unk>); a still RM keeps its vocabulary."""
    from experiments import vlm_smoke
    from rdance.world.vlm import world_corpus

    data = vlm_smoke.get_config().data
    still = set(" ".join(world_corpus(data)).split())
    data.motion_words = True
    moving = set(" ".join(world_corpus(data)).split())
    assert not {"moving", "up", "down", "staying"} & still
    assert {"moving", "up", "down", "staying"} <= moving


def test_clip_captions_say_what_moves_and_questions_are_judged():
    """The moving world's VLM pretraining set: every caption is its clip's motion prompt, which
    the clip satisfies; a grounding question's yes/no is what the motion judge says of the clip."""
    from rdance.world.clip_pairs import WorldClipCaptions
    from rdance.world.motion import sample_motion_scene

    captions = WorldClipCaptions(30, seed=1, frames=4)
    for i in range(30):
        record = captions[i]
        assert record.kind == "point" and record.label == 1 and not record.criteria
        assert record.images[0].shape == (4, 32, 32, 3)
        mscene = sample_motion_scene(np.random.default_rng([1, i]))
        assert record.prompt == mscene.prompt and judge_clip(record.images[0], mscene).score == 1.0
    assert {w for i in range(30) for w in captions[i].prompt.split()} >= {"left", "right", "up", "down", "still"}
    np.testing.assert_array_equal(captions[3].images[0], WorldClipCaptions(30, seed=1, frames=4)[3].images[0])

    questions = WorldClipCaptions(60, seed=2, frames=4, question_share=1.0)
    labels = []
    for i in range(60):
        record = questions[i]
        assert record.criteria == WorldClipCaptions.QUESTION
        mscene = sample_motion_scene(np.random.default_rng([2, i]))
        labels.append(record.label)
        assert (judge_clip(record.images[0], mscene).score == 1.0) == (record.label == 1), (i, record.prompt)
    assert 15 < sum(labels) < 45
    for bad, match in ((dict(question_share=1.5), "question_share"), (dict(frames=1), "at least 2 frames"),
                       (dict(mistake_weights={"missing": 1.0}), "unknown mistakes"),
                       (dict(mistakes=()), "name some of")):
        with pytest.raises(ValueError, match=match):
            WorldClipCaptions(4, seed=0, **bad)


def test_clip_captions_source_draws_hard_negatives_for_training_only_and_reads_motion_words(monkeypatch):
    import ml_collections
    import rdance.world  # noqa: F401  (registers the world's sources)
    from rdance.data.registry import open_source
    from rdance.world.vlm import world_corpus

    data = ml_collections.ConfigDict(dict(image_size=32, clip_frames=3, question_share=1.0, train="world_clip_captions",
                                          eval_sets="", clip_mistake_weights=dict(direction=20.0)))
    trained, train = drawn_mistakes(monkeypatch, open_source("world_clip_captions", data, seed=0, size=80, noise=0.0,
                                                             train=True), 80)
    assert all(record.images[0].shape == (3, 32, 32, 3) for record in train)
    held_out, _ = drawn_mistakes(monkeypatch, open_source("world_clip_captions", data, seed=0, size=80, noise=0.0), 80)
    assert trained.count("direction") > 0.7 * len(trained) and held_out.count("direction") < 0.4 * len(held_out)
    with pytest.raises(ValueError, match=r"unknown near misses \['single'\]"):
        open_source("world_clip_captions:single", data, seed=0, size=2, noise=0.0)
    data.question_share = 0.0   # a named set is questions only, on those near misses alone
    misses, direction = drawn_mistakes(monkeypatch, open_source("world_clip_captions:direction", data, seed=0, size=40,
                                                                noise=0.0), 40)
    assert all(record.criteria == "question" for record in direction)
    assert set(misses) == {"direction"} and {r.label for r in direction} == {0, 1}
    assert {"moving", "left", "staying"} <= set(" ".join(world_corpus(data)).split())


def test_clip_caption_rows_show_each_frame_and_answer_with_the_motion(tmp_path):
    """A clip caption row lays the clip out "FrameN: <image>" per frame (cut to rm.video_frames)
    and is answered by the motion prompt, whose every word the clip VLM's tokenizer knows."""
    import ml_collections
    from rdance.data.tokenizer import build_word_tokenizer
    from rdance.reward import templates as T
    from rdance.reward.folder import load_tokenizer, template_corpus
    from rdance.reward.rows import RowBuilder, RowSpec
    from rdance.world.clip_pairs import WorldClipCaptions
    from rdance.world.vlm import world_corpus

    data = ml_collections.ConfigDict(dict(train="world_clip_captions", eval_sets=""))
    build_word_tokenizer([*template_corpus(), *world_corpus(data)], str(tmp_path))
    template = T.TokenTemplate(load_tokenizer(str(tmp_path)))
    record = WorldClipCaptions(1, seed=0, frames=5)[0]
    spec = RowSpec(paradigm="caption", image_size=32, tokens_per_tile=4, max_prompt_tokens=64, max_answer_tokens=16,
                   video_frames=2)
    rows = RowBuilder(template, spec)(record)
    assert rows["images"].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(rows["images"][1], record.images[0][-1])
    text = template.tokenizer.decode(rows["input_ids"][0][rows["attention_mask"][0] > 0])
    assert "Frame1" in text and "Frame2" in text and "Frame3" not in text and "<unk>" not in text
    answer = rows["targets"][0][rows["target_kind"][0] > 0]
    assert template.tokenizer.decode(answer[:-1]) == record.prompt
