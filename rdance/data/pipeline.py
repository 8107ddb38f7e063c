"""Grain input pipelines: deterministic shuffle, per-host slices of each global batch, and an
iterator whose position is checkpointed with the model.

Each host reads only its own examples: host p of H takes rows [p*L, (p+1)*L) of every global
batch of size G = H*L, so the global batch assembled on the mesh holds the same examples in the
same order whatever the number of hosts (one process with 8 devices and two with 4 give the same
batches, hence the same losses).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import grain
import jax


class RandomAccess(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


def host_batches(source: RandomAccess, *, global_batch_size: int, num_steps: int, seed: int,
                 transform: Callable[[Any], Any] | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 read_threads: int = 2) -> grain.IterDataset:
    """An endless-enough stream of this host's batches for ``num_steps`` training steps."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} does not split over "
                         f"{process_count} hosts; make it a multiple of the host count")
    if len(source) == 0:
        raise ValueError("the training data source is empty")
    local = global_batch_size // process_count
    epochs = math.ceil(num_steps * global_batch_size / len(source)) + 1
    # Shuffle indices, not records: cheap, and identical on every host for the same seed.
    order = grain.MapDataset.range(len(source)).repeat(epochs).shuffle(seed=seed)
    num_batches = len(order) // global_batch_size

    def global_position(i: int) -> int:
        batch, row = divmod(i, local)
        return batch * global_batch_size + process_index * local + row

    ds = grain.MapDataset.range(num_batches * local).map(lambda i: source[order[global_position(i)]])
    if transform is not None:
        ds = ds.map(transform)
    # Background threads build the next batches while the device computes; the iterator's
    # checkpointed position still counts only the batches handed to the loop.
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * local, 8))
    return ds.batch(local, drop_remainder=True).to_iter_dataset(read)
