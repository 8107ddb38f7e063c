"""Clip preference pairs from the moving world, labelled by the motion judge (with optional label
noise): what pairs.py does for still images, for clips of a motion prompt.

A near-miss clip makes one mistake a video generator makes: it moves the wrong way (or moves
when asked to stay), stays still when asked to move, swaps the object for another halfway,
draws it in a wrong colour or a wrong shape, or lets it vanish halfway. (The world video
generator's commonest mistake is the shape: its squares and triangles come out as blobs that the
judge names nothing, bench/results/video_refl.md.) Records hold clips [frames, H, W, 3];
rdance.data.records writes them to JSONL as lists of frame paths.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rdance.data.records import PreferenceRecord
from rdance.world.motion import (FRAMES, MOTION_KINDS, MOTIONS, OPPOSITE, MotionScene, draw_path, plan,
                                 sample_motion_scene)
from rdance.world.motion_judge import judge_clip
from rdance.world.pairs import draw_option, judged_pair, normalised_mistake_weights
from rdance.world.prompts import COLOURS, SHAPES, ObjectSpec
from rdance.world.render import mistaken_scene

CLIP_MISTAKES = ("direction", "static", "swap", "colour", "shape", "vanish")
MOTION_CRITERIA = ("Video-text alignment: every object in the prompt is present in every frame with "
                   "the right colour and shape, stated positions are respected, and the scene moves "
                   "as the prompt says.")


def possible_clip_mistakes(mscene: MotionScene) -> tuple[str, ...]:
    """Every mistake but 'static' for a still prompt (its faithful clip is static)."""
    return tuple(m for m in CLIP_MISTAKES if m != "static" or mscene.motion != "still")


def render_clip_variant(mscene: MotionScene, mistake: str | None, size: int = 32, frames: int = FRAMES,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """``render_clip`` of the motion scene, or of it with ``mistake`` made (None: no mistake)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    scene, motion = mscene.scene, mscene.motion
    if mistake == "direction":   # the opposite way; a still prompt's scene moves instead
        motion = OPPOSITE.get(motion) or str(rng.choice([m for m in MOTIONS if m != "still"]))
    elif mistake == "static":
        if motion == "still":
            raise ValueError(f"{mscene.prompt!r} asks for a still scene: 'static' is no mistake for it")
        motion = "still"
    elif mistake in ("colour", "shape"):
        scene = mistaken_scene(scene, mistake, rng)
    elif mistake not in (None, "swap", "vanish"):
        raise ValueError(f"unknown clip mistake {mistake!r}; known: {CLIP_MISTAKES}")
    path = plan(scene, motion, size, rng)
    clip = draw_path(path, size, frames)
    if mistake in ("swap", "vanish"):   # from halfway on, one object is another, or gone
        i = int(rng.integers(len(path.items)))
        items = list(path.items)
        if mistake == "swap":
            taken = {o.colour for o in items}
            items[i] = ObjectSpec(str(rng.choice([c for c in COLOURS if c not in taken])),
                                  str(rng.choice([s for s in SHAPES if s != items[i].shape])))
            later = dataclasses.replace(path, items=tuple(items))
        else:
            keep = [j for j in range(len(items)) if j != i]
            later = dataclasses.replace(path, items=tuple(items[j] for j in keep),
                                        starts=tuple(path.starts[j] for j in keep),
                                        radii=tuple(path.radii[j] for j in keep))
        clip[frames // 2:] = draw_path(later, size, frames)[frames // 2:]
    return clip


def make_clip_pair(index: int, seed: int, size: int, frames: int, label_noise: float, kinds=MOTION_KINDS,
                   clean_share: float = 0.0, mistakes=CLIP_MISTAKES,
                   mistake_weights: dict[str, float] | None = None) -> PreferenceRecord:
    """One clip pair for ``index``: deterministic from (seed, index), judged, maybe mislabelled.
    With probability ``clean_share`` a faithful clip meets a near miss; otherwise both clips are
    drawn from {faithful, each mistake} and ranked by the motion judge's score. Only the kinds of
    near miss in ``mistakes`` are drawn, uniformly or by ``mistake_weights`` (normalised, see
    pairs.normalised_mistake_weights)."""
    rng = np.random.default_rng([seed, index])
    mscene = sample_motion_scene(rng, kinds)
    options = [None, *(m for m in possible_clip_mistakes(mscene) if m in mistakes)]
    clips, winner, rationale = judged_pair(
        rng, options, lambda options: draw_option(rng, options, mistake_weights),
        lambda mistake: render_clip_variant(mscene, mistake, size, frames, rng), lambda clip: judge_clip(clip, mscene),
        clean_share, label_noise)
    return PreferenceRecord(prompt=mscene.prompt, images=clips, label=winner,
                            criteria=MOTION_CRITERIA, rationale=rationale)


def check_clip_source(frames: int, mistakes) -> None:
    """A clip source's frame count and near-miss kinds, checked before any clip is drawn."""
    unknown = set(mistakes) - set(CLIP_MISTAKES)
    if unknown or not mistakes:
        raise ValueError(f"clip mistakes {sorted(unknown) or '(none)'}: name some of {CLIP_MISTAKES}")
    if frames < 2:
        raise ValueError(f"data.clip_frames={frames}: a clip needs at least 2 frames to show motion")


class ClipPairs:
    """A random-access source of judged clip pairs (for grain); ``seed`` keeps sets disjoint."""

    def __init__(self, num_pairs: int, seed: int, size: int = 32, frames: int = FRAMES, label_noise: float = 0.0,
                 kinds=MOTION_KINDS, clean_share: float = 0.0, mistakes=CLIP_MISTAKES,
                 mistake_weights: dict[str, float] | None = None):
        if not 0.0 <= label_noise < 0.5:
            raise ValueError(f"label_noise={label_noise}: use a value in [0, 0.5)")
        if not 0.0 <= clean_share <= 1.0:
            raise ValueError(f"clean_share={clean_share}: use a value in [0, 1]")
        check_clip_source(frames, mistakes)
        self.num_pairs, self.seed, self.size, self.frames = num_pairs, seed, size, frames
        self.noise, self.kinds, self.clean_share, self.mistakes = label_noise, kinds, clean_share, tuple(mistakes)
        self.mistake_weights = normalised_mistake_weights(mistake_weights, CLIP_MISTAKES)

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> PreferenceRecord:
        if not 0 <= index < self.num_pairs:
            raise IndexError(index)
        return make_clip_pair(int(index), self.seed, self.size, self.frames, self.noise, self.kinds,
                              self.clean_share, self.mistakes, self.mistake_weights)


class WorldClipCaptions:
    """Clips with what they show: a VLM pretraining set for the moving world, meant to let a clip
    RM start from a VLM that reads motion off frames. A still VLM's captions never name a motion
    (the clip RM built on one stays at chance on direction near misses); here the motion word is
    in every caption. Measured (bench/results/video_refl.md): 800 steps on it leave the smoke VLM
    at chance on that word, so this is the set to train and probe motion reading on, not a fix.

    Each record is a random motion scene's faithful clip captioned by its prompt or, for
    ``question_share`` of them, a grounding question: the prompt asked about (criteria
    "question") and its faithful clip (label 1, "yes") or a near miss of it (label 0, "no"),
    the near miss drawn uniformly or by ``mistake_weights`` (as ClipPairs) from the kinds in
    ``mistakes`` (a prompt none of them fits, a still one for 'static', gets its faithful clip)."""

    QUESTION = "question"

    def __init__(self, num_clips: int, seed: int, size: int = 32, frames: int = FRAMES, kinds=MOTION_KINDS,
                 question_share: float = 0.0, mistake_weights: dict[str, float] | None = None,
                 mistakes=CLIP_MISTAKES):
        if not 0.0 <= question_share <= 1.0:
            raise ValueError(f"data.question_share={question_share} must lie in [0, 1]")
        check_clip_source(frames, mistakes)
        self.num, self.seed, self.size, self.frames, self.kinds = num_clips, seed, size, frames, kinds
        self.question_share, self.mistakes = question_share, tuple(mistakes)
        self.mistake_weights = normalised_mistake_weights(mistake_weights, CLIP_MISTAKES)

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> PreferenceRecord:
        if not 0 <= index < self.num:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        mscene = sample_motion_scene(rng, self.kinds)
        if rng.random() < self.question_share:
            options = [m for m in possible_clip_mistakes(mscene) if m in self.mistakes]
            faithful = rng.random() < 0.5 or not options
            mistake = None if faithful else draw_option(rng, options, self.mistake_weights)
            clip = render_clip_variant(mscene, mistake, self.size, self.frames, rng)
            return PreferenceRecord(prompt=mscene.prompt, images=(clip,), label=int(faithful), criteria=self.QUESTION)
        clip = render_clip_variant(mscene, None, self.size, self.frames, rng)
        return PreferenceRecord(prompt=mscene.prompt, images=(clip,), label=1)
