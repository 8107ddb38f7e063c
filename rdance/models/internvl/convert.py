"""Hugging Face InternVL checkpoints (``*-hf``) in and out of rdance's parameter tree.

Every rdance parameter names its HF key (a ``{i}`` template for the scanned layers) and how the
tensor is laid out there. Loading checks every shape against the ``eval_shape`` tree, fails on a
key left over on either side, and reads each tensor straight onto its shards (only the rows a
shard needs are read from disk). Export writes the layout ``save_pretrained`` writes.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding as sh

from .config import InternVLConfig
from .safetensors_io import CorruptCheckpointError, SafetensorsFile, write

# transformers >= 4.52 names modules model.vision_tower... in memory but saves (and the hub
# checkpoints hold) the older layout; accept both, write the saved one.
_NEW_TO_SAVED = ((r"^model\.language_model\.", "language_model.model."),
                 (r"^model\.vision_tower\.", "vision_tower."),
                 (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
                 (r"^lm_head\.", "language_model.lm_head."))

_VISION_LAYER = {"attn.q": "attention.q_proj", "attn.k": "attention.k_proj",
                 "attn.v": "attention.v_proj", "attn.proj": "attention.projection_layer",
                 "attn.q_norm": "attention.q_norm", "attn.k_norm": "attention.k_norm",
                 "norm1": "layernorm_before", "norm2": "layernorm_after",
                 "fc1": "mlp.fc1", "fc2": "mlp.fc2", "": ""}
_TEXT_LAYER = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj",
               "attn.v": "self_attn.v_proj", "attn.o": "self_attn.o_proj",
               "input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_OTHER = {"vision.patch_bias": "vision_tower.embeddings.patch_embeddings.projection.bias",
          "vision.final_norm": "vision_tower.layernorm",
          "projector.norm": "multi_modal_projector.layer_norm",
          "projector.linear_1": "multi_modal_projector.linear_1",
          "projector.linear_2": "multi_modal_projector.linear_2",
          "language.embed.embedding": "language_model.model.embed_tokens.weight",
          "language.norm": "language_model.model.norm",
          "language.lm_head": "language_model.lm_head"}
# Layouts: rdance tensor = HF tensor with `lead` leading size-1 axes dropped, then transposed by `perm`.
_CONV = (2, 3, 1, 0)  # torch conv [out, in, kh, kw] -> rdance [kh, kw, in, out]


class CheckpointMismatchError(ValueError):
    """Checkpoint keys or shapes that do not match the model the config describes."""


def normalize_key(key: str) -> str:
    for pattern, repl in _NEW_TO_SAVED:
        key = re.sub(pattern, repl, key)
    return key


def hf_spec(path: tuple[str, ...]) -> tuple[str, int, tuple | None]:
    """rdance state path -> (HF key, possibly with '{i}', dropped leading axes, permutation)."""
    name = ".".join(str(p) for p in path)
    module, leaf = name.rpartition(".")[0], path[-1]
    special = {"vision.cls_token": ("vision_tower.embeddings.cls_token", 2, None),
               "vision.mask_token": ("vision_tower.embeddings.mask_token", 2, None),
               "vision.position_embeddings": ("vision_tower.embeddings.position_embeddings", 1, None),
               "vision.patch_kernel": ("vision_tower.embeddings.patch_embeddings.projection.weight", 0, _CONV),
               "vision.layers.lambda_1": ("vision_tower.encoder.layer.{i}.lambda_1", 0, None),
               "vision.layers.lambda_2": ("vision_tower.encoder.layer.{i}.lambda_2", 0, None)}
    if name in special:
        return special[name]
    if name in _OTHER:
        return _OTHER[name], 0, None
    if module.startswith("vision.layers."):
        base = "vision_tower.encoder.layer.{i}." + _VISION_LAYER[module[len("vision.layers."):]]
    elif module.startswith("language.layers."):
        base = "language_model.model.layers.{i}." + _TEXT_LAYER[module[len("language.layers."):]]
    else:
        base = _OTHER[module]
    if leaf == "kernel":
        return base + ".weight", 0, (1, 0)
    return f"{base}.{leaf}", 0, None


def _hf_shape(shape: tuple, lead: int, perm) -> tuple:
    if perm is not None:
        shape = tuple(shape[perm.index(j)] for j in range(len(shape)))
    return (1,) * lead + tuple(shape)


class Checkpoint:
    """The tensors of a HF folder: ``model.safetensors`` or a sharded ``*.index.json``."""

    def __init__(self, path: str):
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CorruptCheckpointError(f"{index}: not a safetensors index ({e!r})") from e
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in {path}; download the "
                "checkpoint's *.safetensors files into this folder")
        self.files, self.where = [], {}
        for name in files:
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file} is listed in the index but missing; download it")
            st = SafetensorsFile(file)
            self.files.append(st)
            for key in st.tensors:
                self.where[normalize_key(key)] = (st, key)

    def shape(self, key):
        if key not in self.where:
            return None
        st, original = self.where[key]
        return st.shape(original)

    def read(self, key, index=()):
        st, original = self.where[key]
        return st.read(original, index)

    def close(self):
        for st in self.files:
            st.close()


def _layer_keys(template: str, n: int) -> list[str]:
    return [template.format(i=i) for i in range(n)] if "{i}" in template else [template]


def plan(abstract_state: nnx.State, ckpt: Checkpoint, tied: bool) -> dict:
    """Map every rdance leaf to its HF keys; check shapes and leftovers before reading any data."""
    entries, used, missing, bad = {}, set(), [], []
    for path, var in jax.tree.leaves_with_path(abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        keys_path = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)
        template, lead, perm = hf_spec(keys_path)
        shape = var.value.shape
        stacked = "{i}" in template
        per_key = shape[1:] if stacked else shape
        keys = _layer_keys(template, shape[0] if stacked else 1)
        for key in keys:
            got = ckpt.shape(key)
            if got is None:
                missing.append(key)
            elif tuple(got) != _hf_shape(per_key, lead, perm):
                bad.append(f"{key}: checkpoint {tuple(got)}, config expects {_hf_shape(per_key, lead, perm)}")
            used.add(key)
        entries[keys_path] = (keys, lead, perm, stacked)
    extra = sorted(set(ckpt.where) - used)
    if tied and "language_model.lm_head.weight" in extra:
        # Some tied checkpoints still store the head; it must then equal the embedding.
        if not np.array_equal(ckpt.read("language_model.lm_head.weight"),
                              ckpt.read("language_model.model.embed_tokens.weight")):
            bad.append("language_model.lm_head.weight differs from embed_tokens but the config sets "
                       "tie_word_embeddings=true")
        extra.remove("language_model.lm_head.weight")
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys the config needs are missing: {missing[:8]}")
    if extra:
        problems.append(f"{len(extra)} checkpoint keys map to no parameter: {extra[:8]}")
    if bad:
        problems.append(f"{len(bad)} shape mismatches: {bad[:8]}")
    if problems:
        raise CheckpointMismatchError("checkpoint does not match config.json: " + "; ".join(problems))
    return entries


def _read_shard(ckpt, keys, lead, perm, stacked, index, dtype):
    """The rdance-layout block ``index`` of one leaf, read key by key (layer by layer)."""
    def one(key, idx):
        hf_idx = idx if perm is None else tuple(idx[perm.index(j)] for j in range(len(idx)))
        block = ckpt.read(key, (0,) * lead + tuple(hf_idx)).reshape(
            tuple(s.stop - s.start for s in hf_idx))
        return block if perm is None else block.transpose(perm)
    if not stacked:
        return one(keys[0], index).astype(dtype)
    layers = range(*index[0].indices(len(keys)))
    # Filled layer by layer: one copy of the shard, never a list of layers plus their stack.
    out = np.empty((len(layers),) + tuple(s.stop - s.start for s in index[1:]), dtype)
    for n, i in enumerate(layers):
        out[n] = one(keys[i], index[1:])
    return out


def load_state(path: str, abstract_state: nnx.State, shardings: nnx.State, tied: bool) -> nnx.State:
    """Read a HF folder into a state shaped like ``abstract_state``, each leaf on its shardings."""
    ckpt = Checkpoint(path)
    try:
        entries = plan(abstract_state, ckpt, tied)

        def load(path, var, sharding):
            keys_path = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)
            keys, lead, perm, stacked = entries[keys_path]
            shape, dtype = var.value.shape, var.value.dtype
            array = jax.make_array_from_callback(
                shape, sharding.value,
                lambda index: _read_shard(ckpt, keys, lead, perm, stacked, _full(index, shape), dtype))
            # Wait for the copy to the device, so host buffers of one leaf only are alive at a time.
            return var.replace(array.block_until_ready())
        is_var = lambda x: isinstance(x, nnx.Variable)
        return jax.tree.map_with_path(load, abstract_state, shardings, is_leaf=is_var)
    finally:
        ckpt.close()


def _full(index, shape):
    """Slices with explicit bounds (make_array_from_callback may pass slice(None))."""
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def export(state: nnx.State, config: InternVLConfig, out_dir: str, dtype=None,
           max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors (sharded with an index above ``max_shard_bytes``) that
    ``transformers.InternVLForConditionalGeneration.from_pretrained`` loads."""
    os.makedirs(out_dir, exist_ok=True)
    tensors, sources = [], {}
    for path, var in jax.tree.leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        keys_path = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)
        template, lead, perm = hf_spec(keys_path)
        value = var.value
        stacked = "{i}" in template
        out_dtype = np.dtype(dtype or value.dtype)
        per_key = value.shape[1:] if stacked else value.shape
        for i, key in enumerate(_layer_keys(template, value.shape[0] if stacked else 1)):
            tensors.append((key, _hf_shape(per_key, lead, perm), out_dtype))
            sources[key] = (value, i if stacked else None, lead, perm)

    def produce(key):
        value, i, lead, perm = sources[key]
        # Only one layer of one leaf comes to the host at a time.
        block = np.asarray(jax.device_get(value[i] if i is not None else value))
        if perm is not None:
            block = block.transpose(np.argsort(perm))
        return block.reshape((1,) * lead + block.shape)

    groups, size = [[]], 0
    for t in tensors:
        nbytes = int(np.prod(t[1])) * t[2].itemsize
        if max_shard_bytes and groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += nbytes
    if len(groups) == 1:
        write(os.path.join(out_dir, "model.safetensors"), groups[0], produce)
    else:
        weight_map = {}
        for n, group in enumerate(groups):
            name = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
            write(os.path.join(out_dir, name), group, produce)
            weight_map.update({key: name for key, _, _ in group})
        total = sum(int(np.prod(s)) * d.itemsize for _, s, d in tensors)
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf = config.hf_dict
    if dtype is not None:
        hf["dtype"] = str(np.dtype(dtype))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
