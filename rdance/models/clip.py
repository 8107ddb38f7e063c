"""CLIP (transformers' ``CLIPModel``): a text tower, a vision tower, a projection of each pooled
output into one embedding space, and the learnt temperature ``logit_scale``. Preference scorers
such as PickScore are published in this layout.

    model = load_clip_model("/ckpt/PickScore_v1")        # a transformers CLIPModel folder
    image_embeds = model.image_embeds(pixels)            # [B, H, W, 3] normalised, as the processor gives
    text_embeds = model.text_embeds(ids, mask)           # unit vectors in the shared space
    tower = load_clip_vision("/ckpt/Wan2.1-I2V-14B-480P-Diffusers/image_encoder")  # a CLIPVisionModel folder
    tokens = tower.hidden_state(pixels, -2)              # hidden_states[-2], what Wan's I2V reads

The text tower is FLUX's port (rdance.models.flux.clip); the vision tower shares its encoder
layer, without the causal mask. Preprocessing, tokenisation and the score are
rdance.reward.clip_score.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.core import sharding
from rdance.core.sharding import param
from rdance.models import attention as attnlib
from rdance.models import convert
from rdance.models.flux import clip as textlib
from rdance.models.flux import config as cfglib
from rdance.models.flux.clip import ACTIVATIONS, CLIPTextConfig, CLIPTextModel, Layer
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.layers import Conv2d, Embed, LayerNorm, Linear, default_kernel_init

MODEL_TYPE = "clip"
ARCHITECTURE = "CLIPModel"
VISION_MODEL_TYPE, VISION_ARCHITECTURE = "clip_vision_model", "CLIPVisionModel"
# transformers' defaults for keys a config.json leaves out (older files list only what differs).
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, eos_token_id=2)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
MODEL_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    STRICT = False
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    text: CLIPTextConfig
    vision: CLIPVisionConfig
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    def to_json(self, **text_extra) -> dict:
        """config.json as transformers' CLIPConfig writes it (rdance-only fields dropped);
        ``text_extra``: keys of text_config the forward pass does not read (bos/pad token ids)."""
        return dict(architectures=[ARCHITECTURE], model_type=MODEL_TYPE, projection_dim=self.projection_dim,
                    logit_scale_init_value=self.logit_scale_init_value,
                    text_config=dict(cfglib.to_dict(self.text), model_type="clip_text_model",
                                     projection_dim=self.projection_dim, **text_extra),
                    vision_config=dict(cfglib.to_dict(self.vision), model_type="clip_vision_model",
                                       projection_dim=self.projection_dim))


class CLIPVisionModel(nnx.Module):
    """transformers' ``CLIPVisionTransformer``: patch convolution, class token, learnt positions,
    pre_layrnorm, the encoder, and post_layernorm on the class token (the pooled output)."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP vision hidden_act {cfg.hidden_act!r} is not supported")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"CLIP vision image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        attnlib.check(cfg.attention)
        self.cfg = cfg
        d, pdt = cfg.hidden_size, jnp.dtype(cfg.param_dtype)
        self.class_embedding = param(default_kernel_init(rngs.params(), (d,), pdt), ("embed",))
        self.patch_embedding = Conv2d(cfg.num_channels, d, cfg.patch_size, stride=cfg.patch_size, use_bias=False,
                                      rngs=rngs, param_dtype=pdt, dtype=cfglib.dtype_of(cfg.dtype))
        positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.position_embedding = Embed(positions, d, rngs=rngs, axes=("length", "embed"), param_dtype=pdt)
        self.pre_layrnorm = LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = make_stack(lambda r: Layer(cfg, r, causal=False), cfg.num_hidden_layers, rngs)
        self.post_layernorm = LayerNorm(d, eps=cfg.layer_norm_eps)

    def _embed(self, pixel_values):
        cfg = self.cfg
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"CLIP vision input of shape {pixel_values.shape}; the model takes "
                             f"[B, {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}] (resize and crop first)")
        x = self.patch_embedding(pixel_values)
        b = x.shape[0]
        x = x.reshape(b, -1, x.shape[-1])      # patches row by row, as torch's flatten(2)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding.embedding[...][None].astype(x.dtype)
        return self.pre_layrnorm(x)

    def __call__(self, pixel_values):
        """pixel_values [B, H, W, C] (normalised, channels last) -> (last_hidden_state [B, 1 + N, D],
        pooler_output [B, D])."""
        x = run_stack(self.layers, self._embed(pixel_values), None, remat=self.cfg.remat)
        return x, self.post_layernorm(x[:, 0])

    def hidden_state(self, pixel_values, index: int = -2):
        """transformers' ``hidden_states[index]`` (output_hidden_states=True) [B, 1 + N, D]: 0 is
        the embeddings after pre_layrnorm, i the output of layer i. Wan's image-to-video reads -2
        (the penultimate layer, before any final norm); only the layers it needs are run."""
        layers = self.cfg.num_hidden_layers
        if not -(layers + 1) <= index <= layers:
            raise ValueError(f"hidden state index {index} is out of range for {layers} layers")
        n = index % (layers + 1)
        graphdef, state = nnx.split(self.layers)
        first = nnx.merge(graphdef, jax.tree.map(lambda a: a[:n], state))
        return run_stack(first, self._embed(pixel_values), None, remat=self.cfg.remat)


def _normalise(x):
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIPModel(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.text.param_dtype)
        self.text_model = CLIPTextModel(cfg.text, rngs=rngs)
        self.vision_model = CLIPVisionModel(cfg.vision, rngs=rngs)
        self.visual_projection = Linear(cfg.vision.hidden_size, cfg.projection_dim, axes=("embed", None),
                                        use_bias=False, rngs=rngs, param_dtype=pdt)
        self.text_projection = Linear(cfg.text.hidden_size, cfg.projection_dim, axes=("embed", None),
                                      use_bias=False, rngs=rngs, param_dtype=pdt)
        self.logit_scale = param(jnp.asarray(cfg.logit_scale_init_value, pdt), ())

    def image_embeds(self, pixel_values):
        """[B, H, W, C] -> unit vectors [B, projection_dim] (float32)."""
        return _normalise(self.visual_projection(self.vision_model(pixel_values)[1]))

    def text_embeds(self, input_ids, attention_mask=None):
        """[B, L] token ids -> unit vectors [B, projection_dim] (float32)."""
        return _normalise(self.text_projection(self.text_model(input_ids, attention_mask)[1]))

    def __call__(self, input_ids, pixel_values, attention_mask=None):
        """(logits_per_image [B_img, B_text], image_embeds, text_embeds), as ``CLIPModel.forward``."""
        image, text = self.image_embeds(pixel_values), self.text_embeds(input_ids, attention_mask)
        return jnp.exp(self.logit_scale[...].astype(jnp.float32)) * image @ text.T, image, text


# ----- checkpoint layout

def torch_key(path: tuple[str, ...]) -> str:
    tower = path[0]
    if tower in ("visual_projection", "text_projection"):
        return f"{tower}.weight"
    if tower == "logit_scale":
        return "logit_scale"
    if tower == "text_model":
        return "text_model." + textlib.torch_key(path[1:])
    part = path[1]
    if part == "class_embedding":
        return "vision_model.embeddings.class_embedding"
    if part in ("patch_embedding", "position_embedding"):
        return f"vision_model.embeddings.{part}.weight"
    if part in ("pre_layrnorm", "post_layernorm"):
        return f"vision_model.{part}.{path[2]}"
    return "vision_model." + textlib.torch_key(path[1:])   # the encoder layers: the text tower's names


def normalise_key(key: str) -> str | None:
    """Checkpoints from transformers before 4.31 also stored the ``position_ids`` buffers."""
    return None if key.endswith("embeddings.position_ids") else key


def read_config(path, **runtime) -> CLIPConfig:
    """The CLIPConfig of a transformers CLIPModel folder, or a clear error naming what it holds."""
    raw = cfglib.read_json(path)
    cfglib.check_type(raw, path, class_names=(ARCHITECTURE,), model_types=(MODEL_TYPE,))
    text = raw.get("text_config") or raw.get("text_config_dict") or {}
    vision = raw.get("vision_config") or raw.get("vision_config_dict") or {}
    top = {k: raw.get(k, v) for k, v in MODEL_DEFAULTS.items()}
    return CLIPConfig(text=cfglib.from_dict(CLIPTextConfig, dict(TEXT_DEFAULTS, **text), **runtime),
                      vision=cfglib.from_dict(CLIPVisionConfig, dict(VISION_DEFAULTS, **vision), **runtime),
                      projection_dim=int(top["projection_dim"]),
                      logit_scale_init_value=float(top["logit_scale_init_value"]))


def load_clip_vision(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> CLIPVisionModel:
    """A transformers ``CLIPVisionModel`` folder (e.g. a Wan I2V pipeline's ``image_encoder``)."""
    raw = cfglib.read_json(path)
    cfglib.check_type(raw, path, class_names=(VISION_ARCHITECTURE,), model_types=(VISION_MODEL_TYPE,))
    cfg = cfglib.from_dict(CLIPVisionConfig, dict(VISION_DEFAULTS, **raw), **runtime)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CLIPVisionModel(cfg, rngs=nnx.Rngs(0))))
    shardings = None if mesh is None else sharding.state_shardings(abstract, mesh, rules)
    # transformers 5 writes the tower's keys without the ``vision_model.`` prefix older releases
    # (and the released Wan image encoders) carry: either layout loads.
    return nnx.merge(graphdef, convert.load_state(
        path, abstract, lambda p: torch_key(("vision_model",) + p).removeprefix("vision_model."), shardings,
        rename=lambda key: normalise_key(key.removeprefix("vision_model."))))


def load_clip_model(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> CLIPModel:
    """A transformers ``CLIPModel`` folder (config.json + model.safetensors) as a :class:`CLIPModel`,
    each parameter placed on its shard of ``mesh`` (None: the first device)."""
    cfg = read_config(path, **runtime)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CLIPModel(cfg, rngs=nnx.Rngs(0))))
    shardings = None if mesh is None else sharding.state_shardings(abstract, mesh, rules)
    return nnx.merge(graphdef, convert.load_state(path, abstract, torch_key, shardings, rename=normalise_key))


def export_clip_model(model_or_params, cfg: CLIPConfig, path, **text_extra) -> Path:
    """Write a CLIPModel (or its parameters as a pure dict) as transformers' ``save_pretrained`` does;
    ``text_extra`` as in :meth:`CLIPConfig.to_json`."""
    if isinstance(model_or_params, nnx.Module):
        state = nnx.state(model_or_params, nnx.Param)
    else:
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CLIPModel(cfg, rngs=nnx.Rngs(0))), nnx.Param)
        state = nnx.state(nnx.merge(graphdef, jax.device_get(model_or_params)), nnx.Param)
    return convert.export(state, path, torch_key, cfg.to_json(**text_extra))
