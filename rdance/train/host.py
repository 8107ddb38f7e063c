"""Host-side views of global arrays, and barriers, that work the same with one process or many."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np


def to_host(tree: Any) -> Any:
    """Every array of ``tree`` as a numpy array holding the whole global value. With several
    processes this is a collective: every process must call it."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def sync(name: str) -> None:
    """Wait for every process (a no-op alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Process 0's value of ``flag`` on every process (so all take the same branch)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
