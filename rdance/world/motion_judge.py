"""The motion judge: does a clip show what its motion prompt asks for?

Three parts, each in [0, 1], and the score is their product (a clip that is right in every frame
but moves the wrong way is wrong):

per_frame    the still judge's score (judge.py: objects, colours, shapes, counts, relation) of
             each frame, averaged;
direction    for each named object, its centroid track (the still judge's segmentation: palette
             colour, connected component, named shape) moves as asked: at least size/10 along the
             asked direction, never backwards from one frame to the next, little sideways; or,
             for "staying still", hardly at all. Shuffled frames break the monotone track;
persistence  for each named object, the share of frames where it is found exactly once, in its
             colour and shape, no further than size/4 from where it was last seen (an object that
             vanishes, changes colour or shape, or is swapped for another fails those frames).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rdance.world.judge import Detection, judge
from rdance.world.motion import STEP, MotionScene


@dataclasses.dataclass(frozen=True)
class ClipJudgement:
    score: float
    per_frame: float
    direction: float
    persistence: float
    frame_scores: tuple[float, ...]
    checks: tuple[tuple[str, bool], ...]   # (finding in words, passed)

    def parts(self) -> dict[str, float]:
        return {"per_frame": self.per_frame, "direction": self.direction, "persistence": self.persistence}


def _only(detections: tuple[Detection, ...], colour: str, shape: str):
    """The centre of the one detection of this colour and shape, or None (none, or several)."""
    found = [d.centre for d in detections if d.colour == colour and d.shape == shape]
    return np.asarray(found[0], np.float64) if len(found) == 1 else None


def _persistence(track: list, size: int) -> int:
    """Frames where the object is seen, no further than size/4 from its last sighting."""
    kept, last = 0, None
    for centre in track:
        if centre is not None and (last is None or np.hypot(*(centre - last)) <= size / 4):
            kept += 1
        if centre is not None:
            last = centre
    return kept


def seen_motion(points: np.ndarray, size: int) -> str:
    """What a track does, in the prompts' words: 'moving left', 'staying still', or 'moving
    back and forth' (no monotone path along its main direction)."""
    net = points[-1] - points[0]
    if np.abs(points - points[0]).max() <= max(1.0, size / 32):
        return "staying still"
    axis = int(np.abs(net).argmax())
    word = {(0, True): "down", (0, False): "up", (1, True): "right", (1, False): "left"}[axis, bool(net[axis] > 0)]
    ok, _ = moves_as_asked(points, word, size)
    return f"moving {word}" if ok else "moving back and forth"


def moves_as_asked(points: np.ndarray, motion: str, size: int) -> tuple[bool, float]:
    """Whether the centroids [frames, 2] (y, x) follow ``motion``; and the net travel along it."""
    if motion == "still":
        spread = float(np.abs(points - points[0]).max())
        return spread <= max(1.0, size / 32), spread
    direction = np.asarray(STEP[motion])
    along, across = points @ direction, points @ direction[::-1]
    net = float(along[-1] - along[0])
    monotone = np.diff(along).min() >= -size / 128
    return bool(net >= size / 10 and monotone and np.abs(across - across[0]).max() <= size / 10), net


def judge_clip(clip: np.ndarray, mscene: MotionScene) -> ClipJudgement:
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or len(clip) < 2:
        raise ValueError(f"the motion judge expects a clip [frames >= 2, H, W, 3], got shape {clip.shape}")
    size, frames = clip.shape[1], len(clip)
    verdicts = [judge(frame, mscene.scene) for frame in clip]
    frame_scores = tuple(v.score for v in verdicts)
    checks: list[tuple[str, bool]] = []
    directions, persistence = [], []
    for spec in mscene.scene.objects:
        name = f"the {spec.colour} {spec.shape}"
        track = [_only(v.detections, spec.colour, spec.shape) for v in verdicts]
        kept = _persistence(track, size)
        persistence.append(kept / frames)
        checks.append((f"{name} is kept in {kept} of {frames} frames", kept == frames))
        seen = np.stack([c for c in track if c is not None]) if sum(c is not None for c in track) >= 2 else None
        ok = seen is not None and moves_as_asked(seen, mscene.motion, size)[0]
        asked = "staying still" if mscene.motion == "still" else f"moving {mscene.motion}"
        doing = "seen in too few frames" if seen is None else seen_motion(seen, size)
        checks.append((f"{name} is {doing}, asked {asked}" if not ok else f"{name} is {asked}", ok))
        directions.append(float(ok))
    bad_frames = sum(s < 1.0 for s in frame_scores)
    checks.append((f"{frames - bad_frames} of {frames} frames show the scene", bad_frames == 0))
    per_frame, direction, kept = float(np.mean(frame_scores)), float(np.mean(directions)), float(np.mean(persistence))
    return ClipJudgement(per_frame * direction * kept, per_frame, direction, kept, frame_scores, tuple(checks))
