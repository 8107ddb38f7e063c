"""InternVL image preprocessing in JAX, differentiable end to end.

Matches transformers' InternVL image processor (``GotOcr2ImageProcessor`` with
``crop_to_patches=True``): choose the tile grid whose aspect ratio is closest to the image's,
resize to it with antialiased bicubic (torch's kernel, a = -0.5), cut ``image_size`` tiles, add a
thumbnail of the whole image when there is more than one tile, then normalise. Resizing is two
matrix products, so gradients flow to the pixels. The grid depends only on the (static) shape.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the InternVL3 *-hf preprocessor_config.json sets
IMAGENET_STD = (0.229, 0.224, 0.225)


def tile_grid(height: int, width: int, image_size: int, min_tiles: int = 1, max_tiles: int = 12):
    """(columns, rows): transformers' get_optimal_tiled_canvas, ties broken the same way."""
    grids = sorted(((w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1)
                    if min_tiles <= w * h <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * grid[0] * grid[1]:
            best = grid
    return best


def _cubic(x, a=-0.5):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of torch's antialiased bicubic resize along one axis."""
    scale = in_size / out_size
    support_scale = max(scale, 1.0)
    support = 2.0 * support_scale
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = _cubic((np.arange(lo, hi) - center + 0.5) / support_scale)
        weights[i, lo:hi] = w / w.sum()
    return weights.astype(np.float32)


def _quantize(x):
    """Round to 8 bits as an uint8 pipeline does; straight-through, so the gradient passes."""
    q = jnp.clip(jnp.round(x * 255.0), 0, 255) / 255.0
    return x + jax.lax.stop_gradient(q - x)


def resize(image, height: int, width: int, quantize: bool = False):
    """[C, H, W] -> [C, height, width], antialiased bicubic.

    ``quantize`` mimics PIL on uint8 images: the width pass, rounded to 8 bits, then the height pass.
    """
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("chw,pw->chp", image, jnp.asarray(resize_matrix(image.shape[2], width)), precision=hi)
    x = _quantize(x) if quantize else x
    x = jnp.einsum("oh,chp->cop", jnp.asarray(resize_matrix(image.shape[1], height)), x, precision=hi)
    return _quantize(x) if quantize else x


def _to_chw(image):
    image = jnp.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"an image must be [height, width, 3], got shape {tuple(image.shape)}")
    if image.dtype == jnp.uint8:
        image = image.astype(jnp.float32) / 255.0
    elif not jnp.issubdtype(image.dtype, jnp.floating):
        raise ValueError(f"an image must be uint8 or float in [0, 1], got {image.dtype}")
    return jnp.transpose(image, (2, 0, 1)).astype(jnp.float32)


def _normalize(tile, mean, std):
    return (tile - jnp.asarray(mean)[:, None, None]) / jnp.asarray(std)[:, None, None]


def preprocess(image, image_size: int = 448, *, min_tiles: int = 1, max_tiles: int = 12,
               use_thumbnail: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               quantize: bool = False):
    """One image [H, W, 3] (uint8, or float in [0, 1]) -> tiles [n, 3, image_size, image_size].

    ``quantize=True`` rounds resized pixels to 8 bits as transformers (PIL) does on uint8 input.
    """
    x = _to_chw(image)
    cols, rows = tile_grid(x.shape[1], x.shape[2], image_size, min_tiles, max_tiles)
    canvas = resize(x, rows * image_size, cols * image_size, quantize)
    tiles = [canvas[:, r * image_size:(r + 1) * image_size, c * image_size:(c + 1) * image_size]
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(resize(x, image_size, image_size, quantize))
    return jnp.stack([_normalize(t, mean, std) for t in tiles])


def preprocess_images(images, image_size: int = 448, **kwargs):
    """Several images (of one sample or a batch, in prompt order) -> (pixel_values, tiles per image)."""
    tiles = [preprocess(im, image_size, **kwargs) for im in images]
    return jnp.concatenate(tiles), [t.shape[0] for t in tiles]


def preprocess_video(frames, image_size: int = 448, *, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     quantize: bool = False):
    """Video frames [T, H, W, 3] -> [T, 3, image_size, image_size]: one tile per frame, no thumbnail,
    as transformers' InternVL video processor does."""
    return jnp.stack([_normalize(resize(_to_chw(f), image_size, image_size, quantize), mean, std)
                      for f in frames])


def image_placeholder(tiles: int, tokens_per_tile: int, token: str = "<IMG_CONTEXT>",
                      start: str = "<img>", end: str = "</img>") -> str:
    """The prompt text an image expands to (transformers' InternVLProcessor.replace_image_token)."""
    return start + token * (tiles * tokens_per_tile) + end
