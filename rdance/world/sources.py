"""The world's data sources for rdance.data.registry, registered when rdance.world is imported:
'world' or 'world:relation+count' (synthetic preference pairs, by prompt kinds),
'world_clips' or 'world_clips:single+relation' (clip pairs of motion prompts, data.clip_frames
frames each, default 8), 'world_clip_misses:direction' (a faithful clip against a near miss of
the kinds named, 'MISTAKE+MISTAKE'), 'world_captions' (images and what they show, to pretrain a
from-scratch VLM) and 'world_clip_captions' (clips and what they show, motion included)."""
from __future__ import annotations

from rdance.world.clip_pairs import CLIP_MISTAKES, ClipPairs, WorldClipCaptions
from rdance.world.motion import FRAMES, MOTION_KINDS
from rdance.world.pairs import PreferencePairs, WorldCaptions
from rdance.world.prompts import KINDS


def open_pairs(args: str | None, data, *, seed: int, size: int, noise: float, train: bool = False):
    """``size`` pairs of the prompt kinds ``args`` names ('KIND+KIND'; None: every kind). Only
    training pairs follow ``data.mistake_weights``: held-out pairs keep the world's own mix."""
    kinds = KINDS if args is None else tuple(args.split("+"))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"data source 'world:{args}': unknown prompt kinds {sorted(unknown)}; known {KINDS}")
    return PreferencePairs(size, seed=seed, size=data.image_size, label_noise=noise, kinds=kinds,
                           clean_share=data.clean_share,
                           mistake_weights=dict(data.mistake_weights) if train else None)


def open_clip_pairs(args: str | None, data, *, seed: int, size: int, noise: float, train: bool = False):
    """``size`` clip pairs of the motion prompt kinds ``args`` names ('KIND+KIND'; None: every
    kind), ``data.clip_frames`` frames of ``data.image_size`` pixels each. Only training pairs
    follow ``data.clip_mistake_weights``: held-out pairs draw their near misses uniformly."""
    weights = data.get("clip_mistake_weights") if train else None
    kinds = MOTION_KINDS if args is None else tuple(args.split("+"))
    unknown = set(kinds) - set(MOTION_KINDS)
    if unknown:
        raise ValueError(f"data source 'world_clips:{args}': unknown prompt kinds {sorted(unknown)}; "
                         f"known {MOTION_KINDS}")
    return ClipPairs(size, seed=seed, size=data.image_size, frames=data.get("clip_frames", FRAMES),
                     label_noise=noise, kinds=kinds, clean_share=data.get("clean_share", 0.0),
                     mistake_weights=None if weights is None else dict(weights))


def open_clip_misses(args: str | None, data, *, seed: int, size: int, noise: float, train: bool = False):
    """``size`` pairs of a faithful clip and a near miss of the kinds ``args`` names
    ('MISTAKE+MISTAKE', e.g. 'direction': does an RM tell the way a scene moves?)."""
    del train
    if not args:
        raise ValueError(f"data source 'world_clip_misses' needs the near misses: 'world_clip_misses:MISTAKE+MISTAKE' "
                         f"with MISTAKE in {CLIP_MISTAKES}")
    mistakes = tuple(args.split("+"))
    if set(mistakes) - set(CLIP_MISTAKES):
        raise ValueError(f"data source 'world_clip_misses:{args}': unknown near misses "
                         f"{sorted(set(mistakes) - set(CLIP_MISTAKES))}; known {CLIP_MISTAKES}")
    return ClipPairs(size, seed=seed, size=data.image_size, frames=data.get("clip_frames", FRAMES), label_noise=noise,
                     clean_share=1.0, mistakes=mistakes)


def open_captions(args: str | None, data, *, seed: int, size: int, noise: float = 0.0, train: bool = False):
    """``size`` captioned images (and yes/no grounding questions, ``data.question_share`` of them)."""
    del noise, train
    if args is not None:
        raise ValueError(f"data source 'world_captions:{args}': 'world_captions' takes no arguments")
    return WorldCaptions(size, seed=seed, size=data.image_size, question_share=data.question_share)


def open_clip_captions(args: str | None, data, *, seed: int, size: int, noise: float = 0.0, train: bool = False):
    """``size`` captioned clips of ``data.clip_frames`` frames (and yes/no grounding questions,
    ``data.question_share`` of them, whose near misses follow ``data.clip_mistake_weights`` in
    training; held-out questions draw them uniformly). 'world_clip_captions:MISTAKE+MISTAKE' is
    questions only, on near misses of those kinds: as an eval set, its first_token_accuracy is
    how well the VLM tells a prompt's clip from such a near miss."""
    del noise
    mistakes = CLIP_MISTAKES if args is None else tuple(args.split("+"))
    if set(mistakes) - set(CLIP_MISTAKES):
        raise ValueError(f"data source 'world_clip_captions:{args}': unknown near misses "
                         f"{sorted(set(mistakes) - set(CLIP_MISTAKES))}; known {CLIP_MISTAKES}")
    weights = data.get("clip_mistake_weights") if train else None
    return WorldClipCaptions(size, seed=seed, size=data.image_size, frames=data.get("clip_frames", FRAMES),
                             question_share=data.question_share if args is None else 1.0, mistakes=mistakes,
                             mistake_weights=None if weights is None else dict(weights))
