"""InternVL: vision tower -> pixel shuffle -> MLP projector -> features at image-token positions
of a Qwen2 decoder. Module code only; loading, the tokenizer and generation live beside it."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rdance.models.layers import LayerNorm, Linear

from .config import InternVLConfig
from .language import KVCache, Qwen2
from .vision import VisionTower, activation


def pixel_shuffle(x, ratio: float):
    """[n, side, side, c] -> [n, side*r, side*r, c/r^2], the exact reshapes of transformers."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio))
    x = x.transpose(0, 2, 1, 3)
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / ratio ** 2))
    return x.transpose(0, 2, 1, 3)


class Projector(nnx.Module):
    def __init__(self, cfg: InternVLConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d_in = cfg.vision.hidden_size * int(round(1 / cfg.downsample_ratio)) ** 2
        e = cfg.text.hidden_size
        # torch.nn.LayerNorm's default eps: the projector does not read the config's.
        self.norm = LayerNorm(d_in, eps=1e-5, param_dtype=dtype)
        self.linear_1 = Linear(d_in, e, axes=("mlp", "embed"), rngs=rngs, param_dtype=dtype)
        self.linear_2 = Linear(e, e, axes=("mlp", "embed"), rngs=rngs, param_dtype=dtype)
        self.act = activation(cfg.projector_hidden_act)

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(self.norm(x))))


class InternVLModel(nnx.Module):
    def __init__(self, cfg: InternVLConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, remat: str = "none",
                 attention: str = "auto"):
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision, rngs=rngs, dtype=dtype, remat=remat, attention=attention)
        self.projector = Projector(cfg, rngs=rngs, dtype=dtype)
        self.language = Qwen2(cfg.text, tie_word_embeddings=cfg.tie_word_embeddings, rngs=rngs,
                              dtype=dtype, remat=remat, attention=attention)

    def image_features(self, pixel_values):
        """[tiles, C, H, W] -> [tiles, tokens_per_tile, text hidden]."""
        x = self.vision(pixel_values)[:, 1:]  # drop CLS
        n, s, d = x.shape
        side = int(round(s ** 0.5))
        x = pixel_shuffle(x.reshape(n, side, side, d), self.cfg.downsample_ratio)
        return self.projector(x.reshape(n, -1, x.shape[-1]))

    def embed(self, input_ids, pixel_values=None, features=None):
        """Token embeddings with image features written, in order, at the image-token positions.

        ``features`` ([tiles, tokens_per_tile, hidden], from ``image_features``) replaces
        ``pixel_values`` when the caller has them already, e.g. one image shown in several rows.
        The caller checks that the counts match (see api.check_inputs): inside jit they cannot be.
        """
        x = self.language.embed(input_ids)
        if pixel_values is None and features is None:
            return x
        feats = (self.image_features(pixel_values) if features is None else features).astype(x.dtype)
        feats = feats.reshape(-1, feats.shape[-1])
        is_image = input_ids == self.cfg.image_token_id
        # The k-th image token (row-major over batch, length) takes the k-th feature row.
        order = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, feats.shape[0] - 1)
        placed = jnp.take(feats, order, axis=0).reshape(x.shape)
        return jnp.where(is_image[..., None], placed, x)

    def __call__(self, input_ids, pixel_values, attention_mask, positions):
        """Logits [batch, length, vocab] of a whole (padded) sequence, no cache."""
        x = self.embed(input_ids, pixel_values)
        # Causal over the padded row, padding keys masked (a [batch, keys] mask means both).
        hidden, _ = self.language(x, positions, attention_mask.astype(bool))
        return self.language.logits(hidden)

    def prefill(self, input_ids, pixel_values, attention_mask, positions, slots: int):
        """Run the prompt, fill cache slots [0, length); logits of the last column."""
        b, length = input_ids.shape
        x = self.embed(input_ids, pixel_values)
        valid = jnp.zeros((b, slots), bool).at[:, :length].set(attention_mask.astype(bool))
        mask = (jnp.arange(slots)[None, :] <= jnp.arange(length)[:, None])[None] & valid[:, None, :]
        cache = KVCache.zeros(self.cfg.text, b, slots, x.dtype)
        hidden, cache = self.language(x, positions, mask, cache, 0)
        return self.language.logits(hidden[:, -1]), cache

    def decode(self, token, position, cache: KVCache, index, valid):
        """One new token per row at cache slot ``index``; ``valid`` [batch, slots] marks real keys."""
        x = self.language.embed(token[:, None])
        slots = cache.k.shape[2]
        mask = ((jnp.arange(slots) <= index)[None, :] & valid)[:, None, :]
        hidden, cache = self.language(x, position[:, None], mask, cache, index)
        return self.language.logits(hidden[:, 0]), cache
