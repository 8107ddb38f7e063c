"""The reward network: InternVL read at the answer position (generative), or with a scalar head
on the same position's hidden state (the regressive baseline the paper compares against)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.models.internvl.config import InternVLConfig
from rdance.models.internvl.generate import positions_from_mask
from rdance.models.internvl.model import InternVLModel
from rdance.models.internvl.preprocess import preprocess
from rdance.models.layers import Linear


class RewardNet(nnx.Module):
    def __init__(self, config: InternVLConfig, *, regression_head: bool, rngs: nnx.Rngs,
                 dtype=jnp.float32, remat: str = "none", attention: str = "auto"):
        self.vlm = InternVLModel(config, rngs=rngs, dtype=dtype, remat=remat, attention=attention)
        self.head = (Linear(config.text.hidden_size, 1, axes=("embed", None), rngs=rngs,
                            kernel_init=nnx.initializers.zeros) if regression_head else None)

    def hidden(self, input_ids, pixel_values, attention_mask, features=None) -> jax.Array:
        """Final-normed hidden states [batch, length, embed] of a left-padded batch (image
        ``features`` in place of ``pixel_values``: see InternVLModel.embed)."""
        x = self.vlm.embed(input_ids, pixel_values, features)
        # A [batch, keys] mask: causal over the row with padding keys masked.
        hidden, _ = self.vlm.language(x, positions_from_mask(attention_mask), attention_mask.astype(bool))
        return hidden

    def logits(self, hidden) -> jax.Array:
        return self.vlm.language.logits(hidden)

    def score(self, hidden_at_answer) -> jax.Array:
        """The regressive baseline's scalar score."""
        return self.head(hidden_at_answer)[..., 0]


def to_pixels(images: jax.Array, image_size: int, max_tiles: int = 1) -> jax.Array:
    """Images [N, H, W, 3] (uint8, or float in [0, 1]) -> InternVL tiles [N * tiles, 3, S, S].

    Differentiable in the pixels (float input), so a reward's gradient reaches the generator.
    """
    tiles = jax.vmap(lambda im: preprocess(im, image_size, max_tiles=max_tiles))(images)
    return tiles.reshape(-1, *tiles.shape[2:])


def tiles_per_image(height: int, width: int, image_size: int, max_tiles: int = 1) -> int:
    from rdance.models.internvl.preprocess import tile_grid
    cols, rows = tile_grid(height, width, image_size, 1, max_tiles)
    return cols * rows + (1 if cols * rows > 1 else 0)  # a thumbnail joins several tiles
