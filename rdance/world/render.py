"""Draw a scene as an RGB uint8 image, or a near miss of it (one deliberate mistake)."""
from __future__ import annotations

import dataclasses

import numpy as np

from rdance.world.prompts import COLOURS, SHAPES, ObjectSpec, Scene

BACKGROUND = (16, 16, 16)
MISTAKES = ("colour", "shape", "count", "missing", "relation")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def shape_mask(shape: str, height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at (cy, cx) with half-size r, on an HxW grid."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    if shape == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    if shape == "square":
        return (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    if shape == "triangle":  # apex up; the width grows linearly from apex to base
        t = (y - (cy - r)) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(x - cx) <= r * t)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def relation_holds(relation: str, a, b, size: int) -> bool:
    dy, dx = a[0] - b[0], a[1] - b[1]
    margin = size / 8
    main, ortho = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return main >= margin and abs(ortho) <= main


def place(scene: Scene, size: int, rng: np.random.Generator, tries: int = 1000):
    """Centres and half-sizes for every object, non-overlapping, honouring the relation."""
    items = [spec for spec in scene.objects for _ in range(spec.count)]
    # Fewer, larger objects when there are few; three objects must still fit side by side.
    largest = size / (4.0 + 1.5 * len(items))
    for _ in range(tries):
        radii = rng.uniform(size / 7.5, max(largest, size / 7), len(items))
        centres = [rng.uniform(r + 1, size - r - 1, 2) for r in radii]
        # sqrt(2): a square's corners reach that far, and touching objects would merge.
        apart = all(np.hypot(*(centres[i] - centres[j])) > 1.42 * (radii[i] + radii[j]) + 2
                    for i in range(len(items)) for j in range(i))
        if apart and (scene.relation is None or relation_holds(scene.relation, centres[0], centres[1], size)):
            return items, centres, radii
    raise RuntimeError(f"could not place {scene.prompt!r} on a {size}x{size} image")


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """An image [size, size, 3] uint8 that satisfies every check of the scene's prompt."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return draw(*place(scene, size, rng), size)


def draw(items, centres, radii, size: int) -> np.ndarray:
    """Objects (ObjectSpecs of count 1) at the given centres and half-sizes, in palette colours
    on the background: the one drawing routine of still images and clip frames alike."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    for spec, (cy, cx), r in zip(items, centres, radii):
        image[shape_mask(spec.shape, size, size, cy, cx, r)] = COLOURS[spec.colour]
    return image


def mistaken_scene(scene: Scene, mistake: str, rng: np.random.Generator) -> Scene:
    """The scene with one thing wrong: what a generator that half-listened would draw."""
    i = int(rng.integers(len(scene.objects)))
    target = scene.objects[i]

    def swap(new: ObjectSpec) -> Scene:
        objects = list(scene.objects)
        objects[i] = new
        return dataclasses.replace(scene, objects=tuple(objects))

    others = lambda options, current: [o for o in options if o != current]
    if mistake == "colour":
        taken = {o.colour for o in scene.objects}
        return swap(dataclasses.replace(target, colour=str(rng.choice([c for c in COLOURS if c not in taken]))))
    if mistake == "shape":
        taken = {o.shape for o in scene.objects}
        choices = [s for s in SHAPES if s not in taken] or others(SHAPES, target.shape)
        return swap(dataclasses.replace(target, shape=str(rng.choice(choices))))
    if mistake == "count":
        fewer = target.count == 3 or (target.count == 2 and rng.random() < 0.5)
        if scene.relation:  # a relation is between single objects: drop it rather than be ambiguous
            return Scene(scene.objects[:i] + (dataclasses.replace(target, count=2),) + scene.objects[i + 1:])
        return swap(dataclasses.replace(target, count=target.count - 1 if fewer else target.count + 1))
    if mistake == "missing":
        if len(scene.objects) == 1:
            return Scene((ObjectSpec(str(rng.choice(others(list(COLOURS), target.colour))),
                                     str(rng.choice(others(SHAPES, target.shape)))),))
        return Scene(scene.objects[:i] + scene.objects[i + 1:])
    if mistake == "relation":
        return dataclasses.replace(scene, relation=_OPPOSITE[scene.relation])
    raise ValueError(f"unknown mistake {mistake!r}; known: {MISTAKES}")


def possible_mistakes(scene: Scene) -> tuple[str, ...]:
    return tuple(m for m in MISTAKES if m != "relation" or scene.relation)


def render_variant(scene: Scene, mistake: str | None, size: int = 32,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """``render`` of the scene, or of the scene with ``mistake`` made (None: no mistake)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    drawn = scene if mistake is None else mistaken_scene(scene, mistake, rng)
    return render(drawn, size, rng)

