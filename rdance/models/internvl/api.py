"""The public InternVL object: config, tokenizer, parameters on a mesh, logits and generate."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding as sh
from rdance.models import convert

from . import generate as gen, keys
from .config import InternVLConfig, load_config
from .model import InternVLModel


def check_inputs(config: InternVLConfig, input_ids, pixel_values, attention_mask):
    """Host-side checks of transformers-style inputs; returns them as numpy arrays."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an integer array [batch, length], got {ids.dtype} {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask {mask.shape} must have the shape of input_ids {ids.shape}")
    n_tokens = int((ids == config.image_token_id).sum())
    if pixel_values is None:
        if n_tokens:
            raise ValueError(f"input_ids hold {n_tokens} image tokens (id {config.image_token_id}) "
                             "but no pixel_values were given")
        return ids, None, mask
    pix = pixel_values if isinstance(pixel_values, jax.Array) else np.asarray(pixel_values)
    v = config.vision
    expected = (v.num_channels, v.image_size, v.image_size)
    if pix.ndim != 4 or tuple(pix.shape[1:]) != expected:
        raise ValueError(
            f"pixel_values must be [tiles, {', '.join(map(str, expected))}] (all tiles of all images "
            f"of the batch, as transformers' processor returns them), got shape {tuple(pix.shape)}; "
            "rdance.models.internvl.preprocess turns images into tiles")
    if not jnp.issubdtype(pix.dtype, jnp.floating):
        raise ValueError(f"pixel_values must be normalised floats, got {pix.dtype}; raw uint8 images "
                         "go through rdance.models.internvl.preprocess first")
    n_features = pix.shape[0] * config.tokens_per_tile
    if n_tokens != n_features:
        raise ValueError(
            f"image tokens do not match the images: input_ids hold {n_tokens} image tokens "
            f"(id {config.image_token_id}) but {pix.shape[0]} tiles give {n_features} features "
            f"({config.tokens_per_tile} per tile); expand each <image> to tiles x "
            f"{config.tokens_per_tile} tokens")
    return ids, pix, mask


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, pixel_values, attention_mask):
    model = nnx.merge(graphdef, state)
    return model(input_ids, pixel_values, attention_mask, gen.positions_from_mask(attention_mask))


class InternVL:
    """A loaded InternVL: ``logits`` and ``generate`` in transformers' input conventions."""

    def __init__(self, graphdef, state, config: InternVLConfig, mesh, path: str | None = None):
        self.graphdef, self.state, self.config, self.mesh = graphdef, state, config, mesh
        self.path = path
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The folder's tokenizer and chat template, through transformers' AutoTokenizer."""
        if self._tokenizer is None:
            files = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
            if self.path is None or not any(os.path.isfile(os.path.join(self.path, f)) for f in files):
                raise FileNotFoundError(f"no tokenizer files ({', '.join(files)}) in {self.path}; "
                                        "copy them from the original checkpoint folder")
            from transformers import AutoTokenizer  # lazy: only tokenizers, never model code
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        return self._tokenizer

    @property
    def module(self) -> InternVLModel:
        return nnx.merge(self.graphdef, self.state)

    def _place(self, x, dtype=None):
        """Batch-split over the data axes when it divides, else replicated."""
        if x is None:
            return None
        x = jnp.asarray(x, dtype)
        ways = int(np.prod([self.mesh.shape[a] for a in sh.BATCH_AXES]))
        spec = P(sh.BATCH_AXES) if x.shape[0] % ways == 0 else P()
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def _inputs(self, input_ids, pixel_values, attention_mask):
        ids, pix, mask = check_inputs(self.config, input_ids, pixel_values, attention_mask)
        dtype = jax.tree.leaves(self.state)[0].dtype
        return (self._place(ids, jnp.int32), self._place(pix, dtype), self._place(mask, jnp.int32))

    def logits(self, input_ids, pixel_values=None, attention_mask=None) -> jax.Array:
        """[batch, length, vocab]; pixel_values [tiles, C, H, W] with image tokens in input_ids."""
        return _forward(self.graphdef, self.state, *self._inputs(input_ids, pixel_values, attention_mask))

    def generate(self, input_ids, pixel_values=None, attention_mask=None, *, max_new_tokens: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 eos_token_id=None, pad_token_id: int = 0) -> gen.Generation:
        """Greedy (temperature 0) or temperature/top-p sampling; tokens and per-token log-probs.

        Rows are left-padded as transformers' processor pads them (``padding_side='left'``).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids, pix, mask = self._inputs(input_ids, pixel_values, attention_mask)
        eos = np.atleast_1d(np.asarray(-1 if eos_token_id is None else eos_token_id, np.int32))
        logits, cache = gen.prefill(self.graphdef, self.state, ids, pix, mask,
                                    ids.shape[1] + max_new_tokens)
        return gen.decode_loop(self.graphdef, self.state, logits, cache, mask,
                               jax.random.key(seed), jnp.float32(max(temperature, 1e-6)),
                               jnp.float32(top_p), jnp.asarray(eos), jnp.int32(pad_token_id),
                               steps=max_new_tokens, greedy=temperature == 0.0)

    def export(self, out_dir: str, dtype=None, max_shard_bytes: int | None = None):
        """Write a folder that transformers' InternVLForConditionalGeneration loads."""
        export_state(self.state, self.config, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


def load_state(path: str, abstract_state: nnx.State, shardings: nnx.State) -> nnx.State:
    """Read a HF folder into a state shaped like ``abstract_state``, each leaf on its shardings."""
    return convert.load_state(path, abstract_state, keys.torch_key, shardings, rename=keys.normalize_key,
                              tied=keys.TIED)


def export_state(state: nnx.State, config: InternVLConfig, out_dir: str, dtype=None,
                 max_shard_bytes: int | None = None) -> None:
    """config.json and safetensors (sharded with an index above ``max_shard_bytes``) that
    ``transformers.InternVLForConditionalGeneration.from_pretrained`` loads."""
    hf = config.hf_dict
    if dtype is not None:
        hf["dtype"] = str(np.dtype(dtype))
    convert.export(state, out_dir, keys.torch_key, hf, dtype=dtype, max_shard_bytes=max_shard_bytes)


def abstract_model(config: InternVLConfig, dtype=jnp.float32, remat: str = "none", attention: str = "auto"):
    """(graphdef, abstract state) of the model: shapes only, no memory."""
    abstract = nnx.eval_shape(lambda: InternVLModel(config, rngs=nnx.Rngs(0), dtype=dtype, remat=remat,
                                                    attention=attention))
    return nnx.split(abstract)


def load(path: str, mesh=None, dtype=jnp.float32, *, rules=sh.DEFAULT_RULES,
         remat: str = "none", attention: str = "auto") -> InternVL:
    """Load a Hugging Face InternVL folder (config.json + safetensors) onto ``mesh``.

    Without a mesh the model lives on the first device. Parameters are created in ``dtype``,
    each read from disk directly onto its shards. ``remat`` names how the layers recompute
    their activations in a backward pass (rdance.models.remat), ``attention`` the attention
    implementation (rdance.models.attention).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a folder; pass a Hugging Face InternVL checkpoint folder")
    config = load_config(path)
    if mesh is None:
        mesh = sh.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    graphdef, abstract_state = abstract_model(config, dtype, remat, attention)
    shardings = sh.state_shardings(abstract_state, mesh, rules)
    state = load_state(path, abstract_state, shardings)
    return InternVL(graphdef, state, config, mesh, path)
