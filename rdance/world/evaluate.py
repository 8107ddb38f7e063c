"""The programmatic judge over a generator's samples: :class:`JudgeEval` samples held-out world
prompts and reports the judge's mean alignment, overall and per prompt kind: the number that
fine-tuning is meant to raise and that no model was trained on, and which kinds of check it passes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rdance.world.judge import check_rates, judge
from rdance.world.motion_judge import judge_clip
from rdance.world.prompts import Scene


def judge_scores(images: np.ndarray, scenes: Sequence[Scene]) -> np.ndarray:
    return judge_with_checks(images, scenes)[0]


def judge_with_checks(images: np.ndarray, scenes: Sequence[Scene]) -> tuple[np.ndarray, dict[str, float]]:
    """Each image's judge score, and the pass rate of each kind of check over all of them."""
    verdicts = [judge(image, scene) for image, scene in zip(images, scenes)]
    return np.asarray([v.score for v in verdicts], np.float32), check_rates(verdicts)


class JudgeEval:
    """Mean judge alignment over held-out scenes, ``samples_per_prompt`` samples each, with fixed
    noise: sample s of scene p has id ``s * P + p`` (as in rdance.run.judge_generators), so sample 0
    is the same whatever the count. ``sampler`` is a :class:`rdance.train.generator_eval.Sampler`."""

    def __init__(self, sampler, gen, scenes: Sequence[Scene], samples_per_prompt: int = 1):
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt is {samples_per_prompt}; judge at least one sample per prompt")
        self.sampler, self.scenes, self.samples = sampler, list(scenes) * samples_per_prompt, samples_per_prompt
        self.tokens = gen.tokenize([s.prompt for s in self.scenes])

    def judged(self, images: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """({"judge": mean, "check/NAME": check_rates}, each sample's score, each sample's group:
        its scene's prompt kind)."""
        scores, checks = judge_with_checks(images, self.scenes)
        out = {"judge": float(scores.mean()), **{f"check/{name}": rate for name, rate in checks.items()}}
        return out, scores, np.asarray([s.kind for s in self.scenes])

    def __call__(self, trainable, frozen) -> tuple[dict[str, float], np.ndarray]:
        """(:meth:`judged`'s scalars plus "judge/GROUP": the mean per group, the samples
        [samples_per_prompt * P, *sample])."""
        samples = self.sampler(trainable, frozen, self.tokens, np.arange(len(self.scenes)))
        out, scores, groups = self.judged(samples)
        for group in sorted(set(groups)):
            out[f"judge/{group}"] = float(scores[groups == group].mean())
        return out, samples


def judge_clips(clips: np.ndarray, mscenes: Sequence) -> tuple[dict[str, float], np.ndarray]:
    """The motion judge over clips uint8 [N, F, H, W, 3] of motion scenes: ({"judge": mean score,
    "judge/per_frame|direction|persistence": mean parts}, each clip's score)."""
    verdicts = [judge_clip(clip, m) for clip, m in zip(clips, mscenes)]
    scores = np.asarray([v.score for v in verdicts], np.float32)
    out = {"judge": float(scores.mean())}
    for part in ("per_frame", "direction", "persistence"):
        out[f"judge/{part}"] = float(np.mean([getattr(v, part) for v in verdicts]))
    return out, scores


class MotionJudgeEval(JudgeEval):
    """The motion judge (rdance.world.motion_judge) over held-out motion scenes, as
    :class:`JudgeEval` over still scenes; the groups are the asked motions ("judge/left", ...)."""

    def judged(self, clips: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        out, scores = judge_clips(clips, self.scenes)
        return out, scores, np.asarray([m.motion for m in self.scenes])
