"""Minimal safetensors reading and writing that never holds more than the slice it is asked for.

The ``safetensors`` package maps the whole file (every touched page stays resident) and its numpy
backend has no bfloat16; reading with ``os.pread`` row ranges keeps loading memory at one shard.
Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class CorruptCheckpointError(ValueError):
    """A safetensors file whose header or size does not describe valid tensors."""


class SafetensorsFile:
    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        self._fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.pread(self._fd, 8, 0)
            if len(raw) < 8:
                raise CorruptCheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CorruptCheckpointError(f"{path}: header length {n} exceeds the file size {size}")
            try:
                header = json.loads(os.pread(self._fd, n, 8))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptCheckpointError(f"{path}: header is not valid JSON ({e})") from e
        except Exception:
            os.close(self._fd)
            raise
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.tensors = {}
        for name, info in header.items():
            if info.get("dtype") not in DTYPES:
                raise CorruptCheckpointError(f"{path}: tensor {name} has unknown dtype {info.get('dtype')}")
            dtype, shape = np.dtype(DTYPES[info["dtype"]]), tuple(info["shape"])
            begin, end = info["data_offsets"]
            if end - begin != int(np.prod(shape)) * dtype.itemsize or self.data_start + end > size:
                raise CorruptCheckpointError(
                    f"{path}: tensor {name} {shape} {info['dtype']} has byte range [{begin}, {end}) "
                    f"that does not fit its shape or the file ({size} bytes); the file is truncated "
                    "or corrupt, download it again")
            self.tensors[name] = (dtype, shape, self.data_start + begin)

    def shape(self, name: str) -> tuple:
        return self.tensors[name][1]

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
        buf = os.pread(self._fd, (stop - start) * row, offset + start * row)
        rows = np.frombuffer(buf, dtype).reshape((stop - start,) + shape[1:])
        return rows[(slice(None),) + index[1:]]

    def close(self):
        os.close(self._fd)


def write(path: str, tensors: Iterable[tuple[str, tuple, np.dtype]], produce) -> None:
    """Write tensors named in ``tensors`` (name, shape, dtype); ``produce(name)`` gives each array
    when its turn comes, so only one tensor is in memory at a time."""
    tensors = list(tensors)
    header, offset = {}, 0
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape, dtype in tensors:
            array = np.ascontiguousarray(produce(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"{name}: produced {array.shape}, header says {tuple(shape)}")
            f.write(array.tobytes())
