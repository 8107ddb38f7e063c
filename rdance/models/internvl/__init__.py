"""InternVL (transformers' InternVLForConditionalGeneration, the ``*-hf`` checkpoints) in Flax NNX.

``load(path, mesh=None, dtype=...)`` returns an :class:`InternVL` with ``.tokenizer``, ``.config``,
``.logits(input_ids, pixel_values, attention_mask)`` and ``.generate(...)``.
"""
from rdance.models.convert import ConversionError

from . import preprocess
from .api import InternVL, check_inputs, load
from .config import ConfigError, InternVLConfig, load_config
from .generate import Generation

__all__ = ["preprocess", "InternVL", "InternVLConfig", "Generation", "load", "load_config", "check_inputs",
           "ConfigError", "ConversionError"]
