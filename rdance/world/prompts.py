"""Scenes (what an image should show) and the prompts that describe them."""
from __future__ import annotations

import dataclasses

import numpy as np

# Palette colours are far apart in RGB so the judge can tell them apart in blurry samples.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
KINDS = ("single", "count", "pair", "relation")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    count: int = 1

    def describe(self) -> str:
        if self.count == 1:
            return f"a {self.colour} {self.shape}"
        return f"{NUMBER_WORDS[self.count]} {self.colour} {self.shape}s"


@dataclasses.dataclass(frozen=True)
class Scene:
    """Object groups and, for two groups of one object each, an optional spatial relation."""
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def kind(self) -> str:
        if self.relation:
            return "relation"
        if len(self.objects) == 2:
            return "pair"
        return "count" if self.objects[0].count > 1 else "single"

    @property
    def prompt(self) -> str:
        if self.relation:
            a, b = self.objects
            return f"{a.describe()} {self.relation} {b.describe()}"
        return " and ".join(o.describe() for o in self.objects)


def sample_scene(rng: np.random.Generator, kinds=KINDS) -> Scene:
    kind = kinds[rng.integers(len(kinds))]
    colours = list(COLOURS)

    def pick(exclude: ObjectSpec | None = None) -> ObjectSpec:
        while True:
            spec = ObjectSpec(colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
            # Two groups must differ in colour and shape, so each is identifiable on its own.
            if exclude is None or (spec.colour != exclude.colour and spec.shape != exclude.shape):
                return spec

    first = pick()
    if kind == "single":
        return Scene((first,))
    if kind == "count":
        return Scene((dataclasses.replace(first, count=int(rng.integers(2, 4))),))
    second = pick(exclude=first)
    if kind == "pair":
        return Scene((first, second))
    return Scene((first, second), relation=RELATIONS[rng.integers(len(RELATIONS))])


def prompt_set(seed: int, size: int, kinds=KINDS) -> list[Scene]:
    """A deterministic list of scenes: training prompts and held-out prompts use other seeds."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, kinds) for _ in range(size)]
