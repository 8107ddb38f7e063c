"""The programmatic judge: does an image show what its prompt asks for? (GenEval-style checks)

It segments the image by palette colour, finds connected components, names each one's shape by
the best-fitting template in its bounding box, then checks every object group is present with
the right count, and that a requested relation holds between the two objects' centroids.
The score is the fraction of checks passed, in [0, 1]. :func:`check_rates` says which kinds of
check a set of images fails, and whether an object missed by the judge was there in the asked
colour but another shape.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np
from scipy import ndimage

from rdance.world.prompts import COLOURS, NUMBER_WORDS, SHAPES, Scene
from rdance.world.render import BACKGROUND, relation_holds, shape_mask

_PALETTE = np.array([BACKGROUND] + list(COLOURS.values()), np.float32)
_NAMES = ["background"] + list(COLOURS)
CHECK_KINDS = ("present", "count", "relation")


@dataclasses.dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    centre: tuple[float, float]   # (y, x)
    area: int


@dataclasses.dataclass(frozen=True)
class Judgement:
    score: float
    checks: tuple[tuple[str, bool], ...]   # (finding in words, passed)
    detections: tuple[Detection, ...]
    kinds: tuple[str, ...]                 # per check: one of CHECK_KINDS
    colour_found: tuple[bool, ...]         # per object group: something of its colour, any shape

    def findings(self) -> list[str]:
        return [text for text, _ in self.checks]


def detect(image: np.ndarray, max_colour_distance: float = 90.0) -> list[Detection]:
    """Objects in an RGB image: palette-coloured connected components with a named shape."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"judge expects an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255.0, 0, 255)  # floats in [0, 1]
    pixels = np.asarray(image, np.float32)
    distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
    nearest = distance.argmin(-1)
    nearest[distance.min(-1) > max_colour_distance] = 0
    size = image.shape[0]
    min_area = max(3, int((size / 16) ** 2))
    found = []
    for index, name in enumerate(_NAMES[1:], start=1):
        labels, count = ndimage.label(nearest == index)
        for component in range(1, count + 1):
            mask = labels == component
            area = int(mask.sum())
            if area < min_area:
                continue
            found.append(Detection(name, _name_shape(mask), _bbox_centre(mask), area))
    return found


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def _bbox_centre(mask: np.ndarray) -> tuple[float, float]:
    """The geometric centre used when drawing (a triangle's centre of mass sits lower)."""
    y0, y1, x0, x1 = _bbox(mask)
    return (y0 + y1) / 2, (x0 + x1) / 2


@functools.lru_cache(maxsize=256)
def _templates(h: int, w: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Every shape drawn at the sub-pixel centres and half-sizes the renderer could have used."""
    masks, names = [], []
    for shape in SHAPES:
        for r in np.arange(max(h, w) / 2 - 1.5, max(h, w) / 2 - 0.4, 0.25):
            for dy in (-0.25, 0.0, 0.25):
                for dx in (-0.25, 0.0, 0.25):
                    masks.append(shape_mask(shape, h, w, h / 2 + dy, w / 2 + dx, r))
                    names.append(shape)
    return np.stack(masks), tuple(names)


def _name_shape(mask: np.ndarray) -> str:
    """The shape whose template best fits the component (IoU at least 0.5).

    A circle a few pixels wide is nearly a square with cut corners, so one template per shape is
    not enough; an exact render is matched with IoU 1 by one of its own shape's templates.
    """
    y0, y1, x0, x1 = _bbox(mask)
    crop = np.pad(mask[y0:y1, x0:x1], 1)
    templates, names = _templates(*crop.shape)
    iou = (templates & crop).sum((1, 2)) / np.maximum((templates | crop).sum((1, 2)), 1)
    best = int(iou.argmax())
    return names[best] if iou[best] >= 0.5 else "unknown"


def judge(image: np.ndarray, scene: Scene) -> Judgement:
    detections = detect(image)
    checks: list[tuple[str, bool]] = []
    kinds: list[str] = []
    matches = []
    for spec in scene.objects:
        found = [d for d in detections if d.colour == spec.colour and d.shape == spec.shape]
        matches.append(found)
        plural = spec.shape + ("s" if spec.count > 1 else "")
        checks.append((f"{spec.colour} {spec.shape}: {'present' if found else 'missing'}", bool(found)))
        checks.append((f"{spec.colour} {plural}: found {len(found)}, asked for "
                       f"{NUMBER_WORDS[spec.count]}", len(found) == spec.count))
        kinds += ["present", "count"]
    if scene.relation:
        a, b = scene.objects
        ok = (len(matches[0]) == 1 and len(matches[1]) == 1
              and relation_holds(scene.relation, matches[0][0].centre, matches[1][0].centre, image.shape[0]))
        checks.append((f"the {a.colour} {a.shape} is {'' if ok else 'not '}{scene.relation} "
                       f"the {b.colour} {b.shape}", ok))
        kinds.append("relation")
    score = sum(passed for _, passed in checks) / len(checks)
    colour_found = tuple(any(d.colour == spec.colour for d in detections) for spec in scene.objects)
    return Judgement(score, tuple(checks), tuple(detections), tuple(kinds), colour_found)


def check_rates(judgements: Sequence[Judgement]) -> dict[str, float]:
    """Pass rate of each kind of check over many judgements (kinds no prompt asked for are left
    out), ``colour_found``: how often an asked object's colour is in the image in any shape, and
    ``shape_given_colour`` = present / colour_found: how often, when the colour is there, the
    judge also sees the asked shape (a generator that draws colours in the right places but no
    particular shape scores well on colour_found and low here)."""
    passed: dict[str, list[bool]] = {kind: [] for kind in CHECK_KINDS}
    for j in judgements:
        for kind, (_, ok) in zip(j.kinds, j.checks):
            passed[kind].append(ok)
    rates = {kind: float(np.mean(v)) for kind, v in passed.items() if v}
    colour = [found for j in judgements for found in j.colour_found]
    if colour:
        rates["colour_found"] = float(np.mean(colour))
        rates["shape_given_colour"] = rates["present"] / rates["colour_found"] if rates["colour_found"] else 0.0
    return rates
