"""InternVL (transformers' InternVLForConditionalGeneration, the ``*-hf`` checkpoints) in Flax NNX.

``load(path, mesh=None, dtype=...)`` returns an :class:`InternVL` with ``.tokenizer``, ``.config``,
``.logits(input_ids, pixel_values, attention_mask)`` and ``.generate(...)``.
"""
from . import preprocess
from .api import InternVL, check_inputs, load
from .config import ConfigError, InternVLConfig, load_config
from .convert import CheckpointMismatchError
from .generate import Generation
from .safetensors_io import CorruptCheckpointError

__all__ = ["preprocess", "InternVL", "InternVLConfig", "Generation", "load", "load_config", "check_inputs",
           "ConfigError", "CheckpointMismatchError", "CorruptCheckpointError"]
