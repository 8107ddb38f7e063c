"""Data sources by spec: what a config's ``data.train`` and ``data.eval_sets`` name opens as a
random-access source of records.

Built in: a ``.jsonl`` file (see rdance.data.records) and ``tfds:DATA_DIR:FORMAT[:SPLIT]``, a
set converted by ``python -m rdance.run.preference_set`` (Pick-a-Pic v2, HPDv2, ImageRewardDB,
JSONL). Other packages register their own forms with :func:`register_source`: importing
``rdance.world`` adds the synthetic world's ('world', 'world:KIND+KIND', 'world_captions'), so
an entrypoint that reads them imports ``rdance.world`` and the trainers never do.

A mixture is written ``SPEC@WEIGHT|SPEC@WEIGHT`` (a missing weight is 1), e.g.
``world@3|pairs/train.jsonl@1``: each training record is drawn from one part with probability
proportional to its weight, so a small file of the generator's own judged samples can ride along
with the world's unlimited renders.
"""
from __future__ import annotations

import collections.abc
import dataclasses
from typing import Callable, Sequence

import numpy as np

from rdance.data.records import JsonlRecords

# opener(args, data, *, seed, size, noise, train): ``args`` is the text after 'NAME:' (None for
# a bare 'NAME'); ``data`` the config's data block; ``size`` the records to draw where the
# source is synthetic, ``noise`` its label noise, ``train`` whether it feeds training.
Opener = Callable[..., Sequence]


@dataclasses.dataclass(frozen=True)
class _Source:
    opener: Opener
    forms: tuple[str, ...]


_SOURCES: dict[str, _Source] = {}
JSONL_FORM = "a .jsonl file"


def register_source(name: str, opener: Opener, *forms: str) -> None:
    """Specs ``name`` and ``name:ARGS`` open with ``opener``; ``forms`` show how such specs are
    written (default ``'name'``), for the error naming the known forms."""
    if not name or ":" in name:
        raise ValueError(f"data source name {name!r}: a non-empty name without ':'")
    _SOURCES[name] = _Source(opener, forms or (repr(name),))


def known_forms() -> list[str]:
    return [form for source in _SOURCES.values() for form in source.forms] + [JSONL_FORM]


def open_source(spec: str, data, *, seed: int, size: int, noise: float, train: bool = False) -> Sequence:
    """The source ``spec`` names, e.g. 'tfds:/data/tfds:pickapic_v2', 'pairs/train.jsonl' or a
    mixture 'world@3|pairs/train.jsonl'."""
    if "|" in spec:
        parts = [_mixture_part(part, spec) for part in spec.split("|")]
        sources = [open_source(part, data, seed=seed + i, size=size, noise=noise, train=train)
                   for i, (part, _) in enumerate(parts)]
        return Mixture(sources, [weight for _, weight in parts], seed=seed, size=size)
    name, colon, args = spec.partition(":")
    if name in _SOURCES:
        return _SOURCES[name].opener(args if colon else None, data, seed=seed, size=size, noise=noise,
                                     train=train)
    if spec.endswith(".jsonl"):
        return JsonlRecords(spec, skip_bad_records=data.skip_bad_records,
                            allow_outside_paths=data.allow_outside_paths)
    *others, last = known_forms()
    raise ValueError(f"data source {spec!r}: use {', '.join(others)} or {last}")


def _mixture_part(part: str, spec: str) -> tuple[str, float]:
    source, at, weight = part.strip().rpartition("@")
    if not at:
        source, weight = weight, "1"
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not source or not value > 0:
        raise ValueError(f"data source {spec!r}: a mixture is SPEC@WEIGHT|SPEC@WEIGHT with positive weights "
                         f"(e.g. 'world@3|pairs/train.jsonl@1'); {part.strip()!r} is not")
    return source, value


class Mixture(collections.abc.Sequence):
    """Records drawn from several sources in proportion to their weights. Record i's source and its
    index there are fixed by (seed, i), so a mixture is as reproducible and resumable as its parts;
    a part shorter than its share repeats (epochs of a small file), a longer one is sampled."""

    def __init__(self, sources: list[Sequence], weights: list[float], *, seed: int, size: int):
        for i, source in enumerate(sources):
            if len(source) == 0:
                raise ValueError(f"part {i + 1} of the data mixture holds no records")
        self.sources = sources
        self.cumulative = np.cumsum(weights) / np.sum(weights)
        self.seed = seed
        self.length = max(size, *(len(s) for s in sources))

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index in that part) of record ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"record {index} of a mixture of {self.length}")
        u, v = np.random.default_rng([self.seed, index]).random(2)
        part = min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.sources) - 1)
        return part, int(v * len(self.sources[part]))

    def __getitem__(self, index: int):
        part, inner = self.locate(index)
        return self.sources[part][inner]


def _open_tfds(args: str | None, data, **_) -> Sequence:
    from rdance.data.preference_builder import PreferenceSource
    parts = (args or "").split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"data source 'tfds:{args or ''}': use tfds:DATA_DIR:FORMAT[:SPLIT]")
    return PreferenceSource(parts[0], parts[1], parts[2] if len(parts) == 3 else "train")


register_source("tfds", _open_tfds, "tfds:DATA_DIR:FORMAT[:SPLIT]")
