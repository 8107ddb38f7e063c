"""What one generated sample is: an image [H, W, 3] or a clip [F, H, W, 3] (F frames).

A generator's ``image_shape`` is one of the two, and this is the one module that tells them
apart, so the loops never branch on video: arrays of samples keep their time axis wherever it
is, the batch axis first and the pixels' (height, width, channels) last, and only what shows
samples to a person (the sample grids) or words them (reports) asks here.
"""
from __future__ import annotations

import numpy as np

STILL_NDIM = 3          # [H, W, 3]
STRIP_FRAMES = 8        # frames of a clip a sample grid shows, evenly spaced from first to last


def is_clip(shape) -> bool:
    """Whether a sample of ``shape`` ([H, W, 3] or [F, H, W, 3]) has a time axis."""
    if len(shape) not in (STILL_NDIM, STILL_NDIM + 1) or shape[-1] != 3:
        raise ValueError(f"a sample is an image [H, W, 3] or a clip [F, H, W, 3], not {tuple(shape)}")
    return len(shape) == STILL_NDIM + 1


def frame_size(shape) -> tuple[int, int]:
    """(height, width) of an image or of a clip's frames."""
    is_clip(shape)
    return int(shape[-3]), int(shape[-2])


def describe(shape) -> str:
    """'32x32' for an image, '9 frames of 32x16' for a clip."""
    h, w = frame_size(shape)
    return f"{shape[0]} frames of {h}x{w}" if is_clip(shape) else f"{h}x{w}"


def as_stills(samples: np.ndarray, frames: int = STRIP_FRAMES) -> np.ndarray:
    """uint8 samples [N, *sample] -> images [N, H, W', 3] a grid can tile: images as they are, a
    clip as a strip of up to ``frames`` of its frames side by side (evenly spaced, first and last
    included), W' = shown frames x W."""
    samples = np.asarray(samples)
    if not is_clip(samples.shape[1:]):
        return samples
    n, f, h, w, c = samples.shape
    shown = np.unique(np.round(np.linspace(0, f - 1, min(frames, f))).astype(np.int64))
    return samples[:, shown].transpose(0, 2, 1, 3, 4).reshape(n, h, len(shown) * w, c)


def require_stills(shape, what: str, fix: str) -> None:
    """Refuse a clip generator where only images can serve (``what``), saying ``fix``."""
    if is_clip(shape):
        raise ValueError(f"{what} holds still images, but this generator makes clips "
                         f"({describe(shape)}); {fix}")
