"""Video rewards: the RM sees rm.video_frames frames of each clip, picked by one policy in
training rows and at scoring time; a tiny RM trains on the moving world's clip pairs through the
same loop as images, exports, and scores a clip pair."""
import dataclasses
import json
import os

import numpy as np
import pytest

from rdance.reward.rows import RowBuilder
from rdance.reward.video import frame_indices
from tests.conftest import tiny_rm_config


def test_frame_sampling_picks_the_expected_indices():
    assert frame_indices(8, 4, "uniform").tolist() == [0, 2, 5, 7]      # first and last: the whole motion
    assert frame_indices(8, 4, "segments").tolist() == [0, 2, 4, 5]     # InternVL's load_video get_index
    assert frame_indices(16, 8, "segments").tolist() == [0, 2, 4, 6, 8, 9, 11, 13]
    assert frame_indices(8, 3, "head").tolist() == [0, 1, 2]
    assert frame_indices(6, 0, "segments").tolist() == frame_indices(6, 6, "head").tolist() == list(range(6))
    with pytest.raises(ValueError, match="cannot give rm.video_frames=9"):
        frame_indices(8, 9)
    with pytest.raises(ValueError, match="rm.video_sampling='random'"):
        frame_indices(8, 4, "random")


def clip_config(frames=4):
    config = tiny_rm_config()
    config.data.update(train="world_clips", eval_sets="", clip_frames=8, global_batch_size=8, seed=0)
    config.rm.update(video_frames=frames, video_sampling="uniform", max_prompt_tokens=200)
    config.train.update(steps=2, log_every=1, eval_every=100, checkpoint_every=100, async_checkpoints=False)
    config.optim.warmup_steps = 1
    return config


def test_rows_show_the_sampled_frames_one_line_each(tmp_path):
    from rdance.run.train_reward import reward_training
    training = reward_training(clip_config(), str(tmp_path))
    record = training.source[0]
    rows = training.builder(record)
    a, b = (clip[[0, 2, 5, 7]] for clip in record.images)
    np.testing.assert_array_equal(rows["images"], np.concatenate([a, b, b, a]))
    text = training.builder.template.tokenizer.decode(rows["input_ids"][0])
    assert text.count("Frame4") == 2 and "Frame5" not in text and "<unk>" not in text
    # Pointwise rows (winner, then loser) see the same frames, by the policy asked.
    spec = dataclasses.replace(training.builder.spec, paradigm="pointwise", video_sampling="segments")
    rows = RowBuilder(training.builder.template, spec)(record)
    winner, loser = record.images[record.label], record.images[1 - record.label]
    np.testing.assert_array_equal(rows["images"], np.concatenate([winner[[0, 2, 4, 5]], loser[[0, 2, 4, 5]]]))


def test_rm_trains_on_clip_pairs_and_scores_a_clip_pair(tmp_path):
    from rdance.models.internvl.config import ConfigError
    from rdance.reward.api import RewardModel
    from rdance.run import train_reward
    from rdance.world.clip_pairs import render_clip_variant
    from rdance.world.motion import MotionScene
    from rdance.world.prompts import ObjectSpec, Scene
    from tests.conftest import metrics_by_step
    workdir = str(tmp_path / "rm")
    train_reward.run(clip_config(), workdir)
    losses = metrics_by_step(workdir)
    assert sorted(losses) == [1, 2] and all(np.isfinite(losses[s]["loss"]) for s in losses)
    export = os.path.join(workdir, "export")
    with open(os.path.join(export, "reward_config.json")) as f:
        assert json.load(f)["video_frames"] == 4
    rm = RewardModel.from_pretrained(export)
    with pytest.raises(ConfigError, match="video_sampling must be one of uniform, segments, head"):
        RewardModel.from_pretrained(export, video_sampling="random")
    mscene = MotionScene(Scene((ObjectSpec("red", "circle"),)), "left")
    good = render_clip_variant(mscene, None, 32, 8)[None]
    wrong = render_clip_variant(mscene, "direction", 32, 8)[None]
    p = rm.score_pairwise(wrong, good, [mscene.prompt])
    assert p.shape == (1,) and 0.0 < p[0] < 1.0
    # Scoring sees the frames training saw: the 8-frame clips score as their 4 sampled frames.
    picked = [0, 2, 5, 7]
    np.testing.assert_allclose(p, rm.score_pairwise(wrong[:, picked], good[:, picked], [mscene.prompt]), rtol=1e-6)
    assert not np.allclose(p, rm.score_pairwise(wrong[:, :4], good[:, :4], [mscene.prompt]), rtol=1e-6)
