"""The world's vision-language model from scratch: its word tokenizer knows every word the
reward templates write and every word of the world (criteria, prompts, rationales)."""
from __future__ import annotations

import functools

from rdance.reward import folder as rm_folder
from rdance.world.clip_pairs import MOTION_CRITERIA, ClipPairs
from rdance.world.motion import MOTIONS
from rdance.world.pairs import ALIGNMENT_CRITERIA, PreferencePairs


def world_corpus(data=None) -> list[str]:
    """Every word the smoke RM will read or write: templates, criteria, prompts, rationales; and
    the moving world's when ``data`` (a config's data block) trains or evaluates on one of
    CLIP_SOURCES or sets ``motion_words`` (only then, so a still-image RM keeps its vocabulary,
    and its figures)."""
    texts = [*rm_folder.template_corpus(), *_still_texts()]
    if data is not None and (reads_clips(data) or data.get("motion_words", False)):
        texts += _clip_texts()
    return texts


@functools.lru_cache(maxsize=1)
def _still_texts() -> tuple[str, ...]:
    pairs = PreferencePairs(400, seed=12345, size=32)
    return (ALIGNMENT_CRITERIA, *(pairs[i].prompt + " " + pairs[i].rationale for i in range(len(pairs))))


@functools.lru_cache(maxsize=1)
def _clip_texts() -> tuple[str, ...]:
    """The motion criteria, every word a motion prompt or the motion judge's findings use (the
    frame counts too: a clip may be long), and judged pairs' prompts and rationales."""
    words = " ".join([*MOTIONS, "moving staying back and forth, asked seen in too few frames show the scene",
                      "the is kept in of", *map(str, range(65))])
    clips = ClipPairs(32, seed=12345, size=32, frames=4)
    return (MOTION_CRITERIA, words, *(clips[i].prompt + " " + clips[i].rationale for i in range(len(clips))))


CLIP_SOURCES = ("world_clips", "world_clip_misses", "world_clip_captions")


def reads_clips(data) -> bool:
    specs = [data.train] + [entry.partition("=")[2] for entry in data.eval_sets.split(",") if entry]
    return any(spec.partition(":")[0] in CLIP_SOURCES for spec in specs)


def write_model_folder(model, image_size: int, folder: str) -> str:
    """An untrained InternVL folder (``model``'s sizes) whose tokenizer reads the world."""
    return rm_folder.write_model_folder(model, image_size, folder, world_corpus())
