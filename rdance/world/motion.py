"""The moving world: prompts that say how a scene moves, and short clips that show it.

A motion scene is a still scene (one object, or two with an optional relation) and one motion
for all of it: "a red circle moving left", "a blue square above a green triangle, moving down",
"a green triangle staying still". The whole scene moves as one, so a relation asked for holds
in every frame and each frame is judged by the still judge. Clips are drawn with the still
renderer's own routine (render.draw), objects placed so that the path stays inside the frame.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from rdance.world.captions import distinct_split
from rdance.world.prompts import Scene, sample_scene
from rdance.world.render import draw, place

MOTIONS = ("left", "right", "up", "down", "still")
MOTION_KINDS = ("single", "pair", "relation")   # still scenes whose objects are single
STEP = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0), "still": (0.0, 0.0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
FRAMES = 8


@dataclasses.dataclass(frozen=True)
class MotionScene:
    scene: Scene
    motion: str

    def __post_init__(self):
        if self.motion not in MOTIONS:
            raise ValueError(f"motion {self.motion!r}; use one of {MOTIONS}")

    @property
    def prompt(self) -> str:
        words = "staying still" if self.motion == "still" else f"moving {self.motion}"
        # One object reads as a phrase; a group gets a comma, so the motion is the whole scene's.
        return f"{self.scene.prompt} {words}" if len(self.scene.objects) == 1 else f"{self.scene.prompt}, {words}"


def sample_motion_scene(rng: np.random.Generator, kinds=MOTION_KINDS, motions=MOTIONS) -> MotionScene:
    unknown = set(kinds) - set(MOTION_KINDS)
    if unknown:
        raise ValueError(f"motion prompt kinds {sorted(unknown)} unknown; known {MOTION_KINDS}")
    return MotionScene(sample_scene(rng, kinds), motions[rng.integers(len(motions))])


def motion_prompt_set(seed: int, size: int, kinds=MOTION_KINDS) -> list[MotionScene]:
    """A deterministic list of motion scenes (other seeds for held-out prompts)."""
    rng = np.random.default_rng(seed)
    return [sample_motion_scene(rng, kinds) for _ in range(size)]


def min_travel(size: int) -> float:
    """How far a moving scene travels at least over a clip (the judge asks for less)."""
    return size / 6


@dataclasses.dataclass(frozen=True)
class Path:
    """Where each object starts and how far the scene travels, in pixels along STEP[motion]."""
    items: tuple
    starts: tuple[np.ndarray, ...]   # (cy, cx) per object
    radii: tuple[float, ...]
    motion: str
    travel: float

    def centres(self, t: float) -> list[np.ndarray]:
        """Centres at clip time t in [0, 1]."""
        step = np.asarray(STEP[self.motion]) * self.travel * t
        return [c + step for c in self.starts]


def plan(scene: Scene, motion: str, size: int, rng: np.random.Generator, tries: int = 500) -> Path:
    """A placement of the scene whose path over the clip stays inside the frame."""
    dy, dx = STEP[motion]
    for _ in range(tries):
        items, centres, radii = place(scene, size, rng)
        if motion == "still":
            return Path(tuple(items), tuple(centres), tuple(radii), motion, 0.0)
        # Room ahead of each object before its edge (plus the renderer's 1-pixel margin) leaves.
        room = min((size - r - 1 - c[0]) if dy > 0 else (c[0] - r - 1) if dy < 0 else
                   (size - r - 1 - c[1]) if dx > 0 else (c[1] - r - 1) for c, r in zip(centres, radii))
        if room >= min_travel(size):
            travel = rng.uniform(min_travel(size), min(room, size / 3))
            return Path(tuple(items), tuple(centres), tuple(radii), motion, float(travel))
    raise RuntimeError(f"could not fit the path of {MotionScene(scene, motion).prompt!r} in {size}x{size}")


def draw_path(path: Path, size: int, frames: int = FRAMES) -> np.ndarray:
    """The clip [frames, size, size, 3] uint8 of a path, evenly timed from start to end."""
    times = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    return np.stack([draw(path.items, path.centres(t), path.radii, size) for t in times])


def render_clip(mscene: MotionScene, size: int = 32, frames: int = FRAMES,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A clip [frames, size, size, 3] uint8 that satisfies every check of the motion prompt."""
    if frames < 2:
        raise ValueError(f"frames={frames}: a clip needs at least 2 frames to show motion")
    rng = rng if rng is not None else np.random.default_rng(0)
    return draw_path(plan(mscene.scene, mscene.motion, size, rng), size, frames)


def motion_prompt_split(seed: int, num_train: int, num_heldout: int,
                        kinds=MOTION_KINDS) -> tuple[list[MotionScene], list[MotionScene]]:
    """Distinct training and held-out motion prompts that share no prompt text (as the still
    world's ``world_prompt_split``)."""
    rng = np.random.default_rng(seed)
    return distinct_split(lambda: sample_motion_scene(rng, kinds), num_train, num_heldout)


class RenderedClips:
    """Faithful caption-clip pairs of the moving world: item i is a random motion scene drawn and
    rendered with the generator seeded by (seed, i); clips [frames, size, size, 3] uint8."""

    def __init__(self, length: int, *, seed: int, image_size: int = 32, frames: int = FRAMES, kinds=MOTION_KINDS):
        self.length, self.seed, self.image_size, self.frames, self.kinds = length, seed, image_size, frames, kinds

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        mscene = sample_motion_scene(rng, self.kinds)
        return mscene.prompt, render_clip(mscene, self.image_size, self.frames, rng)
