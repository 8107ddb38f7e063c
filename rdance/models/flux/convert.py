"""diffusers/transformers safetensors folders in and out of rdance modules.

Every model supplies ``torch_key(path)``: the reference key of each rdance parameter path, with
``{i}`` for the layer index of stacked blocks. Loading walks the eval_shape tree, so the mapping
is total by construction: a checkpoint key no parameter claims, or a parameter no checkpoint key
fills, is an error naming both sides. Tensors are read one at a time (safetensors is lazy) and
placed straight onto their shards; at most one stacked parameter is on the host at any moment.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rdance.core import sharding

WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
TorchKey = Callable[[tuple[str, ...]], str]


class ConversionError(ValueError):
    """Checkpoint keys or shapes that do not match the model built from its config."""


def checkpoint_index(folder: str | Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file holding it (single file or sharded index)."""
    from safetensors import safe_open
    folder = Path(folder)
    for stem in WEIGHT_STEMS:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {k: folder / v for k, v in weight_map.items()}
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            with safe_open(single, "np") as f:
                return {k: single for k in f.keys()}
    found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else "missing folder"
    raise FileNotFoundError(
        f"no safetensors weights in {folder} (looked for {', '.join(s + '.safetensors[.index.json]' for s in WEIGHT_STEMS)}; "
        f"found {found}). Re-save .bin checkpoints with save_pretrained(safe_serialization=True)")


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _leaves(state) -> list[tuple[tuple[str, ...], nnx.Variable]]:
    flat = jax.tree.leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [(_path_names(p), v) for p, v in flat]


def key_plan(abstract_state, torch_key: TorchKey) -> dict[tuple[str, ...], list[str]]:
    """For each parameter path, the checkpoint keys that fill it (one per layer when stacked)."""
    plan = {}
    for path, var in _leaves(abstract_state):
        template = torch_key(path)
        if "{i}" in template:
            plan[path] = [template.format(i=i) for i in range(var.value.shape[0])]
        else:
            plan[path] = [template]
    return plan


def to_rdance(name: str, tensor: np.ndarray) -> np.ndarray:
    """torch layout -> rdance layout: Linear weights transpose, conv kernels OIHW -> HWIO."""
    if name == "kernel" and tensor.ndim == 2:
        return tensor.T
    if name == "kernel" and tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)
    return tensor


def to_torch(name: str, array: np.ndarray) -> np.ndarray:
    if name == "kernel" and array.ndim == 2:
        return array.T
    if name == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array


def load_module(folder: str | Path, make_model: Callable[[], nnx.Module], torch_key: TorchKey, *,
                mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES,
                rename: Callable[[str], str] = lambda k: k, ignore: Iterable[str] = ()) -> nnx.Module:
    """Build ``make_model()``'s structure and fill it from the checkpoint in ``folder``.

    ``rename`` normalises checkpoint keys written by other library versions (e.g. the
    ``text_model.`` prefix older transformers wrote); ``ignore`` lists keys known to duplicate
    another (tied embeddings), which are dropped rather than reported as leftovers.
    """
    from safetensors import safe_open
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    files = {rename(k): (k, f) for k, f in checkpoint_index(folder).items()}
    for key in ignore:
        files.pop(key, None)
    plan = key_plan(abstract_state, torch_key)

    wanted = {k for keys in plan.values() for k in keys}
    missing, leftover = sorted(wanted - files.keys()), sorted(files.keys() - wanted)
    if missing or leftover:
        raise ConversionError(
            f"checkpoint {folder} does not match the model built from its config: "
            f"{len(missing)} parameters missing from the checkpoint {missing[:8]}, "
            f"{len(leftover)} checkpoint keys with no parameter {leftover[:8]}")

    shardings = sharding.state_shardings(abstract_state, mesh, rules) if mesh is not None else None
    handles = {}

    def read(key):
        original, file = files[key]
        if file not in handles:
            handles[file] = safe_open(file, "np")
        return handles[file].get_tensor(original)

    def fill(path, var, target):
        names = _path_names(path)
        keys = plan[names]
        stacked = "{i}" in torch_key(names)
        want = var.value.shape[1:] if stacked else var.value.shape
        parts = []
        for key in keys:
            tensor = to_rdance(names[-1], read(key))
            if tensor.shape != tuple(want):
                raise ConversionError(f"{key}: checkpoint shape {tensor.shape} (after layout change) "
                                      f"!= model shape {tuple(want)} for {'/'.join(names)}")
            parts.append(tensor.astype(var.value.dtype))
        host = np.stack(parts) if stacked else parts[0]
        if target is None:
            return var.replace(jax.device_put(host))
        return var.replace(jax.make_array_from_callback(host.shape, target.value, lambda idx: host[idx]))

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    if shardings is None:
        state = jax.tree.map_with_path(lambda p, v: fill(p, v, None), abstract_state, is_leaf=is_var)
    else:
        state = jax.tree.map_with_path(fill, abstract_state, shardings, is_leaf=is_var)
    logging.info("loaded %d tensors from %s", len(wanted), folder)
    return nnx.merge(graphdef, state)


def export_module(module: nnx.Module, folder: str | Path, torch_key: TorchKey, config: dict, *,
                  stem: str = "diffusion_pytorch_model", max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``module`` in the reference layout: config.json plus safetensors (sharded with an
    index when larger than ``max_shard_bytes``), loadable by diffusers/transformers
    ``from_pretrained``. Arrays are gathered to this host leaf by leaf."""
    from safetensors.numpy import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    tensors: dict[str, np.ndarray] = {}
    for path, var in _leaves(nnx.state(module, nnx.Param)):
        value = np.asarray(jax.device_get(var.value))
        template = torch_key(path)
        layers = [(template.format(i=i), value[i]) for i in range(value.shape[0])] \
            if "{i}" in template else [(template, value)]
        for key, array in layers:
            tensors[key] = np.ascontiguousarray(to_torch(path[-1], array))

    shards, current, size = [], {}, 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensors[key]
        size += nbytes
    shards.append(current)

    if len(shards) == 1:
        save_file(shards[0], folder / f"{stem}.safetensors", metadata={"format": "pt"})
        return folder
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"{stem}-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.nbytes for t in tensors.values())
    (folder / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder
