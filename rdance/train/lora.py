"""LoRA on a parameter tree: kernel' = kernel + (alpha / rank) * A @ B for the chosen kernels.

It works on any model's pure parameter dict without touching its modules: fine-tuning keeps the
base parameters frozen (a step argument), trains only the factors, and :func:`merge` builds the
effective parameters inside the step. A kernel [in, out] gets A [in, rank] (random) and B
[rank, out] (zero, so training starts from the base model); stacked layers ([layers, in, out])
get stacked factors. Factors are sharded like their kernel on the in/out axes, replicated on rank.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P


def targets(base, pattern: str) -> list[tuple]:
    """Paths of the kernels LoRA adapts: 'kernel' leaves of rank 2 (or 3 when stacked) whose
    '/'-joined path matches the regular expression ``pattern``."""
    flat = traverse_util.flatten_dict(base)
    regex = re.compile(pattern)
    found = [path for path, leaf in flat.items()
             if path[-1] == "kernel" and len(leaf.shape) in (2, 3) and regex.search("/".join(map(str, path)))]
    if not found:
        raise ValueError(f"LoRA pattern {pattern!r} matches no kernel; kernel paths look like "
                         f"{'/'.join(map(str, next(p for p in flat if p[-1] == 'kernel')))}")
    return sorted(found, key=lambda p: tuple(map(str, p)))


def init(base, rank: int, pattern: str, key: jax.Array) -> dict:
    """Factors for every target kernel of ``base`` (arrays or ShapeDtypeStructs)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    flat = traverse_util.flatten_dict(base)
    out = {}
    for i, path in enumerate(targets(base, pattern)):
        shape, dtype = flat[path].shape, flat[path].dtype
        *lead, fan_in, fan_out = shape
        a = jax.random.normal(jax.random.fold_in(key, i), (*lead, fan_in, rank), dtype) / jnp.sqrt(fan_in)
        out[(*path, "lora_a")] = a
        out[(*path, "lora_b")] = jnp.zeros((*lead, rank, fan_out), dtype)
    return traverse_util.unflatten_dict(out)


def merge(base, factors, scale: float):
    """The effective parameters: ``base`` with every adapted kernel replaced by W + scale A B."""
    flat = dict(traverse_util.flatten_dict(base))
    lora = traverse_util.flatten_dict(factors)
    for path in {p[:-1] for p in lora}:
        a, b = lora[(*path, "lora_a")], lora[(*path, "lora_b")]
        w = flat[path]
        flat[path] = (w + scale * jnp.einsum("...ir,...ro->...io", a, b).astype(w.dtype))
    return traverse_util.unflatten_dict(flat)


def shardings(base_shardings, factors_abstract):
    """NamedShardings of the factors from their kernels' shardings (rank axis replicated)."""
    flat_base = traverse_util.flatten_dict(base_shardings)
    out = {}
    for path, leaf in traverse_util.flatten_dict(factors_abstract).items():
        kernel = flat_base[path[:-1]]
        spec = tuple(kernel.spec) + (None,) * (len(leaf.shape) - len(kernel.spec))
        new = (*spec[:-1], None) if path[-1] == "lora_a" else (*spec[:-2], None, spec[-1])
        out[path] = NamedSharding(kernel.mesh, P(*new))
    return traverse_util.unflatten_dict(out)
