"""Which frames of a clip the reward model sees. One count and one policy (rm.video_frames,
rm.video_sampling; saved in the RM folder's reward_config.json) pick the frames of training
rows and of scored clips alike, so an RM is scored on frames chosen as in training.

uniform    evenly spaced from the first frame to the last: the whole motion is in view;
segments   InternVL's own ``load_video``: the middle of each of ``count`` equal segments;
head       the first ``count`` frames.
"""
from __future__ import annotations

import numpy as np

SAMPLINGS = ("uniform", "segments", "head")


def check(count, policy: str) -> None:
    if type(count) is not int or count < 0:
        raise ValueError(f"rm.video_frames={count!r}; use a frame count >= 1, or 0 for every frame")
    if policy not in SAMPLINGS:
        raise ValueError(f"rm.video_sampling={policy!r}; use one of {SAMPLINGS}")


def frame_indices(total: int, count: int, policy: str = "uniform") -> np.ndarray:
    """Indices of the ``count`` frames (0: all) a clip of ``total`` frames is seen by."""
    check(count, policy)
    if count == 0 or count == total:
        return np.arange(total)
    if count > total:
        raise ValueError(f"a clip of {total} frames cannot give rm.video_frames={count}; lower "
                         f"rm.video_frames to {total} or less, or give longer clips")
    if policy == "uniform":
        return np.round(np.linspace(0, total - 1, count)).astype(np.int64)
    if policy == "segments":  # InternVL's get_index over frames 0..total-1
        segment = (total - 1) / count
        return np.array([int(segment / 2 + np.round(segment * i)) for i in range(count)], np.int64)
    return np.arange(count)


def sample(images, count: int, policy: str, axis: int = 0):
    """``images`` with only the chosen frames along ``axis`` (a clip's time axis); numpy or jax
    arrays (the indices are static, so a jitted, differentiated score takes them as they are)."""
    return images.take(frame_indices(images.shape[axis], count, policy), axis=axis)
