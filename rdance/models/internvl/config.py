"""InternVL configuration read from a Hugging Face ``config.json`` (``model_type: internvl``).

Only the fields that change the computation are kept; every unsupported switch is rejected here,
before any weight is read, so a checkpoint never loads into a model that computes something else.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """A checkpoint's config file (config.json, reward_config.json) that rdance cannot run as
    transformers would; the message names the file, the key, what was expected and what it holds."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    hidden_act: str = "gelu"
    norm_type: str = "layer_norm"        # 'layer_norm' (300M encoder) or 'rms_norm' (6B encoder)
    layer_norm_eps: float = 1e-6
    attention_bias: bool = False
    use_qk_norm: bool = False
    use_mask_token: bool = False         # a parameter in the checkpoint, unused at inference
    use_mean_pooling: bool = True        # False adds a final LayerNorm
    use_absolute_position_embeddings: bool = True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    hidden_act: str
    rope_theta: float
    rope_parameters: tuple = ()          # sorted (key, value) pairs, hashable for jit
    max_position_embeddings: int = 32768


@dataclasses.dataclass(frozen=True)
class InternVLConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    downsample_ratio: float = 0.5
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = True
    # The HF dict, kept to write config.json back unchanged on export.
    hf_json: str = dataclasses.field(default="{}", compare=False, repr=False)

    @property
    def tokens_per_tile(self) -> int:
        side = self.vision.image_size // self.vision.patch_size
        return int(side * self.downsample_ratio) ** 2

    @property
    def hf_dict(self) -> dict:
        return json.loads(self.hf_json)


def _require(cond: bool, message: str):
    if not cond:
        raise ConfigError(message)


# The kinds of value a config key holds: what a message says is expected, and the check.
POSITIVE_INT = ("a positive integer", lambda v: type(v) is int and v > 0)
NON_NEGATIVE_INT = ("an integer >= 0", lambda v: type(v) is int and v >= 0)
POSITIVE_NUMBER = ("a positive number", lambda v: type(v) in (int, float) and v > 0)
BOOL = ("true or false", lambda v: type(v) is bool)
STRING = ("a string", lambda v: isinstance(v, str))
OBJECT = ("a JSON object", lambda v: isinstance(v, dict))


class Section:
    """One JSON object of a config file, read key by key: a missing key takes its default, a
    value of the wrong kind is a ConfigError naming the file, the key, the kind and the value."""

    def __init__(self, values: Any, source: str, prefix: str = "",
                 fix: str = "correct it there (or re-export the checkpoint)"):
        self.source, self.prefix, self.fix = source, prefix, fix
        where = f"{source}: {prefix.rstrip('.')}" if prefix else source
        _require(isinstance(values, dict), f"{where} must be {OBJECT[0]}, got {_shown(values)}; {fix}")
        self.values = values

    def get(self, key: str, kind: tuple, default: Any = None, nullable: bool = False) -> Any:
        """``values[key]`` of ``kind``, or ``default`` when absent (or null, if ``nullable``)."""
        value = self.values.get(key, default)
        if value is None and nullable:
            return default
        self.check(key, value, kind)
        return value

    def check(self, key: str, value: Any, kind: tuple):
        expected, ok = kind
        _require(ok(value), f"{self.source}: {self.prefix}{key} must be {expected}, got {_shown(value)}; {self.fix}")

    def section(self, key: str) -> "Section":
        """A required nested object: a missing one is an error, never a silent default."""
        _require(key in self.values, f"{self.source}: {self.prefix}{key} is missing (an InternVL config.json "
                                     "has vision_config and text_config; rdance does not guess their "
                                     "shapes); restore the file the checkpoint was exported with")
        return Section(self.values[key], self.source, f"{self.prefix}{key}.", self.fix)

    def square(self, key: str, default: int) -> int:
        """A size given as one integer or as equal [height, width]."""
        value = self.values.get(key, default)
        if isinstance(value, list) and value:
            _require(len(set(map(json.dumps, value))) == 1,
                     f"{self.source}: {self.prefix}{key}={_shown(value)}; only square {key}s are supported")
            value = value[0]
        self.check(key, value, POSITIVE_INT)
        return value


def _shown(value: Any) -> str:
    """A value as it is written in the JSON file, cut short."""
    try:
        text = json.dumps(value)
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def rope_frequencies(text: TextConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies and cos/sin scale of the config's RoPE, as transformers computes them."""
    params = dict(text.rope_parameters)
    rope_type = params.get("rope_type", params.get("type", "default"))
    dim = text.head_dim
    base = float(params.get("rope_theta", text.rope_theta))
    exponent = np.arange(0, dim, 2, dtype=np.float32) / dim
    inv_freq = 1.0 / (base ** exponent)
    if rope_type == "default":
        return inv_freq.astype(np.float32), 1.0
    if rope_type == "linear":
        return (inv_freq / params["factor"]).astype(np.float32), 1.0
    if rope_type == "yarn":
        factor = params["factor"]
        original = params.get("original_max_position_embeddings") or text.max_position_embeddings
        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        attention_factor = params.get("attention_factor")
        if attention_factor is None:
            m, m_all = params.get("mscale"), params.get("mscale_all_dim")
            attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
        beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1
        def correction_dim(rotations):
            return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))
        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if params.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        pos_freqs = base ** exponent
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
        return inv_freq.astype(np.float32), float(attention_factor)
    raise ConfigError(f"text_config.rope_parameters.rope_type={rope_type!r} is not supported; "
                      "rdance implements 'default', 'linear' and 'yarn'")


def from_hf_dict(d: dict[str, Any], source: str = "config") -> InternVLConfig:
    """Validate a transformers InternVL config dict and keep what the computation needs."""
    top = Section(d, source)
    _require(d.get("model_type") == "internvl",
             f"{source}: model_type is {d.get('model_type')!r}, expected 'internvl' "
             "(an InternVL '*-hf' checkpoint, e.g. OpenGVLab/InternVL3-1B-hf)")
    v, t = top.section("vision_config"), top.section("text_config")
    _require(t.get("model_type", STRING, "qwen2") == "qwen2",
             f"{source}: text_config.model_type={t.values.get('model_type')!r}; only the Qwen2 decoder is ported")
    _require(d.get("vision_feature_layer", -1) == -1,
             f"{source}: vision_feature_layer={d.get('vision_feature_layer')}; only -1 (last layer) is supported")
    _require(d.get("vision_feature_select_strategy", "default") == "default",
             f"{source}: vision_feature_select_strategy must be 'default' (drop the CLS token)")
    layer_types = t.values.get("layer_types") or []
    _require(not t.values.get("use_sliding_window", False) and "sliding_attention" not in layer_types,
             f"{source}: sliding-window attention layers are not supported")
    vision, text = _vision(v), _text(t)
    config = InternVLConfig(
        vision=vision, text=text, image_token_id=top.get("image_token_id", NON_NEGATIVE_INT, 151667),
        downsample_ratio=top.get("downsample_ratio", POSITIVE_NUMBER, 0.5),
        projector_hidden_act=top.get("projector_hidden_act", STRING, "gelu"),
        tie_word_embeddings=top.get("tie_word_embeddings", BOOL, t.get("tie_word_embeddings", BOOL, True)),
        hf_json=json.dumps(d))
    side = vision.image_size // vision.patch_size
    _require((side * config.downsample_ratio) == int(side * config.downsample_ratio) and
             int(round(1 / config.downsample_ratio)) * int(side * config.downsample_ratio) == side,
             f"{source}: a {side}x{side} patch grid cannot be pixel-shuffled by {config.downsample_ratio}")
    rope_frequencies(text)  # fails now on an unsupported RoPE type, not at the first forward
    return config


def _vision(v: Section) -> VisionConfig:
    vision = VisionConfig(
        hidden_size=v.get("hidden_size", POSITIVE_INT, 1024), num_layers=v.get("num_hidden_layers", POSITIVE_INT, 24),
        num_heads=v.get("num_attention_heads", POSITIVE_INT, 16),
        intermediate_size=v.get("intermediate_size", POSITIVE_INT, 4096),
        image_size=v.square("image_size", 448), patch_size=v.square("patch_size", 14),
        num_channels=v.get("num_channels", POSITIVE_INT, 3), hidden_act=v.get("hidden_act", STRING, "gelu"),
        norm_type=v.get("norm_type", STRING, "layer_norm"),
        layer_norm_eps=v.get("layer_norm_eps", POSITIVE_NUMBER, 1e-6),
        attention_bias=v.get("attention_bias", BOOL, False), use_qk_norm=v.get("use_qk_norm", BOOL, False),
        use_mask_token=v.get("use_mask_token", BOOL, False), use_mean_pooling=v.get("use_mean_pooling", BOOL, True),
        use_absolute_position_embeddings=v.get("use_absolute_position_embeddings", BOOL, True))
    _require(vision.norm_type in ("layer_norm", "rms_norm"),
             f"{v.source}: vision_config.norm_type={vision.norm_type!r}; expected layer_norm or rms_norm")
    _require(vision.hidden_size % vision.num_heads == 0,
             f"{v.source}: vision hidden_size {vision.hidden_size} is not divisible by {vision.num_heads} heads")
    _require(vision.image_size >= vision.patch_size,
             f"{v.source}: vision image_size {vision.image_size} is smaller than patch_size {vision.patch_size}")
    return vision


def _text(t: Section) -> TextConfig:
    rope = t.get("rope_parameters", OBJECT, nullable=True) or t.get("rope_scaling", OBJECT, nullable=True) or {}
    rope = dict(rope)
    rope.setdefault("rope_theta", t.get("rope_theta", POSITIVE_NUMBER, 10000.0))
    t.check("rope_parameters.rope_theta", rope["rope_theta"], POSITIVE_NUMBER)
    hidden_size, num_heads = t.get("hidden_size", POSITIVE_INT, 3584), t.get("num_attention_heads", POSITIVE_INT, 28)
    text = TextConfig(
        vocab_size=t.get("vocab_size", POSITIVE_INT, 151936), hidden_size=hidden_size,
        num_layers=t.get("num_hidden_layers", POSITIVE_INT, 28), num_heads=num_heads,
        num_kv_heads=t.get("num_key_value_heads", POSITIVE_INT, num_heads, nullable=True),
        head_dim=t.get("head_dim", POSITIVE_INT, hidden_size // num_heads, nullable=True),
        intermediate_size=t.get("intermediate_size", POSITIVE_INT, 18944),
        rms_norm_eps=t.get("rms_norm_eps", POSITIVE_NUMBER, 1e-6), hidden_act=t.get("hidden_act", STRING, "silu"),
        rope_theta=float(rope["rope_theta"]),
        rope_parameters=tuple(sorted((k, v) for k, v in rope.items() if not isinstance(v, (dict, list)))),
        max_position_embeddings=t.get("max_position_embeddings", POSITIVE_INT, 32768))
    _require(text.num_heads % text.num_kv_heads == 0,
             f"{t.source}: {text.num_heads} attention heads do not split into {text.num_kv_heads} KV groups")
    _require(text.head_dim > 0, f"{t.source}: text_config.hidden_size {hidden_size} gives no head_dim for "
                                f"{num_heads} heads; set text_config.head_dim")
    return text


def load_config(path: str) -> InternVLConfig:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: pass the folder of a Hugging Face InternVL "
                                "checkpoint (it holds config.json and *.safetensors)")
    return from_hf_dict(read_json(file), source=file)


def read_json(file: str) -> Any:
    """A JSON file's value, or a ConfigError naming the file and where it stops being JSON."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise ConfigError(f"{file} is not valid JSON ({e}); restore the file the checkpoint was "
                          "exported with") from None
