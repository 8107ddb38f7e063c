"""Hugging Face safetensors checkpoints in and out of rdance parameter trees: one engine for all models.

Each model supplies ``torch_key(path)``: the checkpoint key of an rdance parameter path, with
``{i}`` standing for the layer of leaves stacked along axis 0 (``blocks.{i}.attn.to_q.weight``
fills index i of the stacked leaf), as a string or as a :class:`Key` when the layout is not the
default. Default layout: a ``kernel`` is a torch Linear weight transposed (2-D) or a conv weight
OIHW -> HWIO (4-D); every other tensor is stored as it is.

Loading checks every key and shape against the ``eval_shape`` tree from the safetensors headers
before reading any data, then reads each leaf straight onto its shards: only the rows a shard
needs come off disk (``os.pread``; the safetensors package maps whole files and its numpy backend
has no bfloat16). Export writes what ``save_pretrained`` writes. Every failure is one
:class:`ConversionError` naming the file, the key, the problem and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Callable

import jax
import ml_dtypes
import numpy as np
from flax import nnx

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
DOWNLOAD_AGAIN = "the file is truncated or corrupt: download it again"
MISMATCH_FIX = ("the weights and config.json do not belong together: use the config.json the "
                "checkpoint was saved with, or re-export the checkpoint")


class ConversionError(ValueError):
    """A checkpoint that does not convert: ``file``, ``key`` (None for the file as a whole),
    what is wrong, and the fix."""

    def __init__(self, file, key: str | None, problem: str, fix: str):
        self.file, self.key, self.problem, self.fix = str(file), key, problem, fix
        super().__init__(f"{file}: {key}: {problem}; {fix}" if key else f"{file}: {problem}; {fix}")


@dataclasses.dataclass(frozen=True)
class Key:
    """A checkpoint key and its layout: the rdance array is the checkpoint tensor with ``lead``
    leading size-1 axes dropped, then transposed by ``perm``."""
    name: str
    lead: int = 0
    perm: tuple[int, ...] | None = None


TorchKey = Callable[[tuple[str, ...]], "str | Key"]


def _spec(torch_key: TorchKey, path: tuple[str, ...], shape: tuple) -> tuple[Key, bool, list[str], tuple]:
    """(layout, stacked, checkpoint keys, rdance shape per key) of one parameter."""
    spec = torch_key(path)
    name = spec if isinstance(spec, str) else spec.name
    stacked = "{i}" in name
    per_key = tuple(shape[1:] if stacked else shape)
    if isinstance(spec, str):
        perm = {2: (1, 0), 4: (2, 3, 1, 0)}.get(len(per_key)) if path[-1] == "kernel" else None
        spec = Key(spec, perm=perm)
    keys = [name.format(i=i) for i in range(shape[0])] if stacked else [name]
    return spec, stacked, keys, per_key


def _checkpoint_shape(shape: tuple, spec: Key) -> tuple:
    if spec.perm is not None:
        shape = tuple(shape[spec.perm.index(j)] for j in range(len(shape)))
    return (1,) * spec.lead + tuple(shape)


def _leaves(state) -> list[tuple[tuple[str, ...], nnx.Variable]]:
    flat = jax.tree.leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [(tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p), v) for p, v in flat]


# ----- safetensors files: 8-byte little-endian header length, a JSON header
# {name: {dtype, shape, data_offsets}}, then the raw little-endian tensor bytes.

class SafetensorsFile:
    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        self._fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.pread(self._fd, 8, 0)
            if len(raw) < 8:
                raise ConversionError(path, None, f"{size} bytes is too short for a safetensors file", DOWNLOAD_AGAIN)
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise ConversionError(path, None, f"header length {n} exceeds the file size {size}", DOWNLOAD_AGAIN)
            try:
                header = json.loads(os.pread(self._fd, n, 8))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConversionError(path, None, f"header is not valid JSON ({e})", DOWNLOAD_AGAIN) from e
            header.pop("__metadata__", None)
            self.tensors = {}
            for name, info in header.items():
                if info.get("dtype") not in DTYPES:
                    raise ConversionError(path, name, f"unknown dtype {info.get('dtype')}",
                                          f"rdance reads {', '.join(DTYPES)}; re-save the checkpoint in one of them")
                dtype, shape = np.dtype(DTYPES[info["dtype"]]), tuple(info["shape"])
                begin, end = info["data_offsets"]
                if end - begin != int(np.prod(shape)) * dtype.itemsize or 8 + n + end > size:
                    raise ConversionError(path, name, f"{shape} {info['dtype']} has byte range [{begin}, {end}) "
                                          f"that does not fit its shape or the file ({size} bytes)", DOWNLOAD_AGAIN)
                self.tensors[name] = (dtype, shape, 8 + n + begin)
        except Exception:
            os.close(self._fd)
            raise

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """``tensor[index]``, reading only the rows of the first axis that the index selects."""
        dtype, shape, offset = self.tensors[name]
        if not shape:
            return np.frombuffer(os.pread(self._fd, dtype.itemsize, offset), dtype).reshape(())
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        if isinstance(index[0], int):  # one row: read it as a one-row slice, then drop the axis
            return self.read(name, (slice(index[0], index[0] + 1),) + index[1:])[0]
        start, stop, _ = index[0].indices(shape[0])
        row = int(np.prod(shape[1:])) * dtype.itemsize
        rows = np.frombuffer(os.pread(self._fd, (stop - start) * row, offset + start * row), dtype)
        return rows.reshape((stop - start,) + shape[1:])[(slice(None),) + index[1:]]

    def close(self):
        os.close(self._fd)


def write_safetensors(path, tensors: list[tuple[str, tuple, np.dtype]], produce: Callable[[str], np.ndarray]):
    """Write the tensors listed as (name, shape, dtype); ``produce(name)`` gives each array when
    its turn comes, so only one tensor is in memory at a time."""
    header, offset = {}, 0
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape, dtype in tensors:
            array = np.asarray(produce(name), dtype=dtype, order="C")   # ascontiguousarray makes 0-d 1-d
            if array.shape != tuple(shape):
                raise ConversionError(path, name, f"produced shape {array.shape}, header says {tuple(shape)}",
                                      "this is a bug in the model's torch_key table")
            f.write(array.tobytes())


class Checkpoint:
    """The tensors of a folder, ``{stem}.safetensors`` or sharded with ``{stem}.safetensors.index.json``,
    by key after ``rename`` (which normalises keys other library versions wrote, and returns None
    for a key to leave out: a non-parameter buffer such as the ``position_ids`` old transformers saved)."""

    def __init__(self, folder, rename: Callable[[str], str] | None = None):
        self.folder, self.files, self.where = Path(folder), [], {}
        try:
            for file in self._weight_files():
                st = SafetensorsFile(file)
                self.files.append(st)
                for key in st.tensors:
                    name = rename(key) if rename else key
                    if name is not None:   # None: a stored buffer that is no parameter
                        self.where[name] = (st, key)
        except Exception:
            self.close()
            raise

    def _weight_files(self) -> list[Path]:
        folder = self.folder
        for stem in WEIGHT_STEMS:
            index = folder / f"{stem}.safetensors.index.json"
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ConversionError(index, None, f"not a safetensors index ({e!r})", DOWNLOAD_AGAIN) from e
                for name in sorted(set(weight_map.values())):
                    if not (folder / name).is_file():
                        key = next(k for k, v in weight_map.items() if v == name)
                        raise ConversionError(folder / name, key, f"{name} is listed in the index ({index.name}) "
                                              "but missing from the folder", "download it")
                return [folder / name for name in sorted(set(weight_map.values()))]
            if (folder / f"{stem}.safetensors").is_file():
                return [folder / f"{stem}.safetensors"]
        found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else "no such folder"
        looked = ", ".join(f"{s}.safetensors[.index.json]" for s in WEIGHT_STEMS)
        raise ConversionError(folder, None, f"no safetensors weights (looked for {looked}; found {found})",
                              "download the checkpoint's *.safetensors files into this folder (re-save .bin "
                              "checkpoints with save_pretrained(safe_serialization=True))")

    def shape(self, key) -> tuple | None:
        if key not in self.where:
            return None
        st, original = self.where[key]
        return st.tensors[original][1]

    def file(self, key) -> str:
        return self.where[key][0].path if key in self.where else str(self.folder)

    def read(self, key, index=()) -> np.ndarray:
        st, original = self.where[key]
        return st.read(original, index)

    def close(self):
        for st in self.files:
            st.close()


def _plan(ckpt: Checkpoint, abstract_state, torch_key: TorchKey, tied: dict[str, str],
          unused: tuple[str, ...] = ()) -> dict:
    """Every leaf's (layout, stacked, keys); keys and shapes checked before any data is read."""
    entries, used, missing, bad = {}, set(), [], []
    for path, var in _leaves(abstract_state):
        spec, stacked, keys, per_key = _spec(torch_key, path, var.value.shape)
        want = _checkpoint_shape(per_key, spec)
        for key in keys:
            got = ckpt.shape(key)
            if got is None:
                missing.append(key)
            elif tuple(got) != want:
                bad.append((key, f"{key}: checkpoint shape {tuple(got)}, config.json expects {want}"))
            used.add(key)
        entries[path] = (spec, stacked, keys)
    extra = sorted(set(ckpt.where) - used)
    dropped = [k for k in extra if any(re.search(pattern, k) for pattern in unused)]
    if dropped:  # keys the reference library also ignores on load (the model declares them)
        logging.info("%s: %d checkpoint keys the model does not use, skipped (e.g. %s)",
                     ckpt.folder, len(dropped), dropped[0])
        extra = [k for k in extra if k not in dropped]
    for duplicate, original in tied.items():
        if duplicate in extra and original in ckpt.where:  # tied weights some checkpoints store twice
            extra.remove(duplicate)
            if not np.array_equal(ckpt.read(duplicate), ckpt.read(original)):
                bad.append((duplicate, f"{duplicate}: differs from {original}, which it ties to"))
    problems = []
    if bad:
        problems.append(f"{len(bad)} shape mismatches {[text for _, text in bad[:8]]}")
    if extra:
        problems.append(f"{len(extra)} checkpoint keys map to no parameter {extra[:8]}")
    if missing:
        problems.append(f"{len(missing)} keys the model needs are missing from the checkpoint {missing[:8]}")
    if problems:
        first = bad[0][0] if bad else (extra or missing)[0]
        raise ConversionError(ckpt.file(first), first, "; ".join(problems), MISMATCH_FIX)
    return entries


def _read_block(ckpt: Checkpoint, spec: Key, stacked: bool, keys: list[str], index: tuple, dtype) -> np.ndarray:
    """Block ``index`` of one leaf in rdance layout, read key by key (layer by layer)."""
    perm = spec.perm

    def one(key, idx):
        ckpt_idx = idx if perm is None else tuple(idx[perm.index(j)] for j in range(len(idx)))
        block = ckpt.read(key, (0,) * spec.lead + tuple(ckpt_idx)).reshape(tuple(s.stop - s.start for s in ckpt_idx))
        return block if perm is None else block.transpose(perm)
    if not stacked:
        return one(keys[0], index).astype(dtype)
    layers = range(*index[0].indices(len(keys)))
    # Filled layer by layer: one copy of the block, never a list of layers plus their stack.
    out = np.empty((len(layers),) + tuple(s.stop - s.start for s in index[1:]), dtype)
    for n, i in enumerate(layers):
        out[n] = one(keys[i], index[1:])
    return out


def load_state(folder, abstract_state, torch_key: TorchKey, shardings=None, *,
               rename: Callable[[str], str] | None = None, tied: dict[str, str] | None = None,
               unused: tuple[str, ...] = ()):
    """The state shaped like ``abstract_state`` (an ``nnx.eval_shape`` state) filled from ``folder``,
    each leaf placed on its sharding in ``shardings`` (a matching state; None: the first device).

    ``rename`` normalises checkpoint keys; ``tied`` maps a key some checkpoints store twice to the
    one it duplicates: a stored duplicate must equal it and is then dropped; ``unused`` are regular
    expressions for checkpoint keys the model declares it does not use (diffusers'
    ``_keys_to_ignore_on_load_unexpected``): skipped, counted in the log, never read."""
    ckpt = Checkpoint(folder, rename)
    try:
        entries = _plan(ckpt, abstract_state, torch_key, tied or {}, tuple(unused))
        first_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def load(path, var, sharding=None):
            spec, stacked, keys = entries[tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)]
            shape, dtype = var.value.shape, var.value.dtype
            array = jax.make_array_from_callback(
                shape, first_device if sharding is None else sharding.value,
                lambda index: _read_block(ckpt, spec, stacked, keys, _bounded(index, shape), dtype))
            # Wait for the copy to the device, so host buffers of one leaf only are alive at a time.
            return var.replace(array.block_until_ready())
        trees = (abstract_state,) if shardings is None else (abstract_state, shardings)
        state = jax.tree.map_with_path(load, *trees, is_leaf=lambda x: isinstance(x, nnx.Variable))
    finally:
        ckpt.close()
    logging.info("loaded %d tensors from %s", len(ckpt.where), folder)
    return state


def _bounded(index, shape):
    """Slices with explicit bounds (make_array_from_callback may pass slice(None))."""
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def export(state, folder, torch_key: TorchKey, config: dict, *, stem: str = "model", dtype=None,
           max_shard_bytes: int | None = None) -> Path:
    """Write ``state`` as ``save_pretrained`` would: config.json plus safetensors, sharded with an
    index above ``max_shard_bytes``. One layer of one leaf comes to this host at a time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, sources = [], {}
    for path, var in _leaves(state):
        value = var.value
        spec, stacked, keys, per_key = _spec(torch_key, path, value.shape)
        for i, key in enumerate(keys):
            tensors.append((key, _checkpoint_shape(per_key, spec), np.dtype(dtype or value.dtype)))
            sources[key] = (value, i if stacked else None, spec)

    def produce(key):
        value, i, spec = sources[key]
        block = np.asarray(jax.device_get(value[i] if i is not None else value))
        if spec.perm is not None:
            block = block.transpose(np.argsort(spec.perm))
        return block.reshape((1,) * spec.lead + block.shape)

    groups, size = [[]], 0
    for t in sorted(tensors):
        nbytes = int(np.prod(t[1])) * t[2].itemsize
        if max_shard_bytes and groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += nbytes
    if len(groups) == 1:
        write_safetensors(folder / f"{stem}.safetensors", groups[0], produce)
    else:
        weight_map = {}
        for n, group in enumerate(groups, 1):
            name = f"{stem}-{n:05d}-of-{len(groups):05d}.safetensors"
            write_safetensors(folder / name, group, produce)
            weight_map.update({key: name for key, _, _ in group})
        total = sum(int(np.prod(s)) * d.itemsize for _, s, d in tensors)
        (folder / f"{stem}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder
