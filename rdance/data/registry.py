"""Data sources by spec: what a config's ``data.train`` and ``data.eval_sets`` name opens as a
random-access source of records.

Built in: a ``.jsonl`` file (see rdance.data.records) and ``tfds:DATA_DIR:FORMAT[:SPLIT]``, a
set converted by ``python -m rdance.run.preference_set`` (Pick-a-Pic v2, HPDv2, ImageRewardDB,
JSONL). Other packages register their own forms with :func:`register_source`: importing
``rdance.world`` adds the synthetic world's ('world', 'world:KIND+KIND', 'world_captions'), so
an entrypoint that reads them imports ``rdance.world`` and the trainers never do.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

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
    """The source ``spec`` names, e.g. 'tfds:/data/tfds:pickapic_v2' or 'pairs/train.jsonl'."""
    name, colon, args = spec.partition(":")
    if name in _SOURCES:
        return _SOURCES[name].opener(args if colon else None, data, seed=seed, size=size, noise=noise,
                                     train=train)
    if spec.endswith(".jsonl"):
        return JsonlRecords(spec, skip_bad_records=data.skip_bad_records,
                            allow_outside_paths=data.allow_outside_paths)
    *others, last = known_forms()
    raise ValueError(f"data source {spec!r}: use {', '.join(others)} or {last}")


def _open_tfds(args: str | None, data, **_) -> Sequence:
    from rdance.data.preference_builder import PreferenceSource
    parts = (args or "").split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"data source 'tfds:{args or ''}': use tfds:DATA_DIR:FORMAT[:SPLIT]")
    return PreferenceSource(parts[0], parts[1], parts[2] if len(parts) == 3 else "train")


register_source("tfds", _open_tfds, "tfds:DATA_DIR:FORMAT[:SPLIT]")
