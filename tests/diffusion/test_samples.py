"""rdance.diffusion.samples, the one place that tells clips from images, and the loop's pieces
that take either: the sample grid's frame strips and the scored sample's random shift."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.diffusion import samples
from rdance.train.finetune_step import random_shift
from rdance.train.monitors import image_grid


def test_shapes_are_described_and_checked():
    assert samples.describe((32, 16, 3)) == "32x16" and samples.describe((9, 32, 16, 3)) == "9 frames of 32x16"
    assert samples.frame_size((9, 32, 16, 3)) == (32, 16) and not samples.is_clip((32, 16, 3))
    with pytest.raises(ValueError, match=r"an image \[H, W, 3\] or a clip \[F, H, W, 3\], not \(32, 16\)"):
        samples.is_clip((32, 16))
    with pytest.raises(ValueError, match="anchor.path=a.jsonl holds still images, but this generator makes clips "
                                         r"\(9 frames of 32x16\); set anchor.weight=0"):
        samples.require_stills((9, 32, 16, 3), "anchor.path=a.jsonl", "set anchor.weight=0")


def test_grids_show_clips_as_strips_of_evenly_spaced_frames():
    clips = np.zeros((2, 17, 4, 3, 3), np.uint8)
    clips[:, :, 0, 0, 0] = np.arange(17)                  # each frame marked with its index
    strips = samples.as_stills(clips)
    assert strips.shape == (2, 4, 8 * 3, 3)
    assert list(strips[0, 0, ::3, 0]) == [0, 2, 5, 7, 9, 11, 14, 16]     # first and last included
    grid = image_grid(clips, 1)
    assert grid.shape == (2 * 5 + 1, 8 * 3 + 2, 3)
    images = np.ones((3, 4, 5, 3), np.uint8)
    assert samples.as_stills(images) is images            # images pass through untouched


def test_random_shift_moves_every_frame_of_a_clip_alike():
    clips = jax.random.uniform(jax.random.key(0), (3, 4, 8, 8, 3))
    shifted = random_shift(clips, jax.random.key(1), jnp.arange(3), 2)
    assert shifted.shape == clips.shape
    per_frame = jnp.stack([random_shift(clips[:, f], jax.random.key(1), jnp.arange(3), 2) for f in range(4)], 1)
    np.testing.assert_array_equal(shifted, per_frame)     # the image shift, the same offset per frame
