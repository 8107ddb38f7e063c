"""Model configs read from the checkpoint folder's config.json, checked against the model type.

Each config is a frozen dataclass whose fields carry the reference library's names, so
``config.json`` maps onto it key by key; rdance-only fields (dtypes, remat, attention) are marked below.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp

# Keys that describe how a file was written rather than the model: ignored on read.
_BOOKKEEPING = {"_class_name", "_diffusers_version", "_name_or_path", "architectures", "model_type",
                "transformers_version", "dtype", "torch_dtype", "_commit_hash"}
# rdance-only fields every config has; they never come from (or go to) config.json.
RUNTIME_FIELDS = ("param_dtype", "dtype", "remat", "attention")


class CheckpointTypeError(ValueError):
    """A folder that holds a different model than the loader expects."""


def read_json(folder: str | Path, name: str = "config.json") -> dict:
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected a diffusers/transformers model folder "
                                f"written by save_pretrained")
    return json.loads(path.read_text())


def check_type(raw: dict, folder, *, class_names: tuple[str, ...] = (), model_types: tuple[str, ...] = ()):
    """Fail with a clear message when config.json names another model class or type."""
    found = raw.get("_class_name") or (raw.get("architectures") or [None])[0]
    ok = (found in class_names) or (raw.get("model_type") in model_types and model_types)
    if not ok:
        want = ", ".join(class_names + model_types)
        raise CheckpointTypeError(
            f"{folder} holds a {found or raw.get('model_type') or 'unknown'} checkpoint, not {want}; "
            "point the loader at the matching subfolder (e.g. transformer/, vae/, text_encoder/)")


def from_dict(cls, raw: dict, **runtime):
    """Build ``cls`` from config.json keys.

    Diffusers configs list only architecture keys, so an unknown one means a variant this port
    does not model: an error. transformers configs also carry generic keys (dropout, token ids,
    generation settings) that do not change the forward pass; classes with ``STRICT = False``
    read the fields they need and leave the rest.
    """
    names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
    unknown = sorted(k for k in raw if k not in names and k not in _BOOKKEEPING
                     and k not in getattr(cls, "IGNORED_KEYS", ()))
    if unknown and getattr(cls, "STRICT", True):
        raise ValueError(f"{cls.__name__}: config.json keys {unknown} are not supported by this port")
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
    return cls(**values, **runtime)


def to_dict(config) -> dict:
    """config.json content for export (rdance-only fields dropped)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.name in RUNTIME_FIELDS:
            continue
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dtype_of(name) -> jnp.dtype | None:
    return None if name is None else jnp.dtype(name)
