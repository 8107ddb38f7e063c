"""JAX preprocessing equals transformers' InternVL image processor (tiling + thumbnail) and is
differentiable. transformers here uses its PIL backend (torchvision is not installed)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.models.internvl import preprocess as pp

pil_processor = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")

LEVEL = 1 / 255 / min(pp.IMAGENET_STD)  # one 8-bit level, in normalised units


@pytest.mark.parametrize("height,width", [(50, 90), (120, 40), (30, 30), (20, 33)])
def test_tiles_match_transformers(height, width):
    image = (np.random.default_rng(height).random((height, width, 3)) * 255).astype(np.uint8)
    processor = pil_processor.GotOcr2ImageProcessorPil(
        size={"height": 28, "width": 28}, crop_to_patches=True, max_patches=6,
        image_mean=pp.IMAGENET_MEAN, image_std=pp.IMAGENET_STD)
    want = processor(images=[image], return_tensors="np")["pixel_values"]
    got = np.asarray(pp.preprocess(image, 28, max_tiles=6, quantize=True))
    assert got.shape == want.shape  # same grid, same thumbnail
    err = np.abs(got - want)
    print(f"{height}x{width}: {got.shape[0]} tiles, max {err.max():.3f}, mean {err.mean():.1e}, "
          f"within one 8-bit level: {(err <= LEVEL * 1.01).mean():.4f}")
    # PIL rounds its fixed-point filter differently in a few places: off by one 8-bit level
    # for most of those, a few levels at the rare pixels where its intermediate clipping bites.
    assert err.mean() < 5e-3
    assert (err <= LEVEL * 1.01).mean() > 0.99


def test_grid_choice_and_thumbnail():
    assert pp.tile_grid(448, 448, 448) == (1, 1)
    assert pp.tile_grid(448, 896, 448) == (2, 1)
    assert pp.tile_grid(1000, 300, 448, max_tiles=12) == (1, 3)
    # A single tile gets no thumbnail; several tiles get one more.
    assert pp.preprocess(np.zeros((28, 28, 3), np.uint8), 28).shape == (1, 3, 28, 28)
    assert pp.preprocess(np.zeros((28, 56, 3), np.uint8), 28).shape == (3, 3, 28, 28)


def test_differentiable_and_batched_helpers():
    image = jnp.asarray(np.random.default_rng(0).random((40, 70, 3)), jnp.float32)
    grad = jax.grad(lambda x: pp.preprocess(x, 28, max_tiles=4, quantize=True).sum())(image)
    assert grad.shape == image.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
    pixels, counts = pp.preprocess_images([image, image[:28, :28]], 28, max_tiles=4)
    assert counts == [3, 1] and pixels.shape == (4, 3, 28, 28)
    assert pp.preprocess_video(jnp.stack([image, image]), 28).shape == (2, 3, 28, 28)
    assert pp.image_placeholder(2, 3) == "<img>" + "<IMG_CONTEXT>" * 6 + "</img>"


def test_bad_image_rank_and_dtype():
    with pytest.raises(ValueError, match=r"\[height, width, 3\]"):
        pp.preprocess(np.zeros((3, 28, 28), np.float32), 28)
    with pytest.raises(ValueError, match="uint8 or float"):
        pp.preprocess(np.zeros((28, 28, 3), np.int32), 28)
