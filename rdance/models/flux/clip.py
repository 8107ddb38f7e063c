"""The CLIP text model (transformers' ``CLIPTextModel``): FLUX uses only its pooled output,
the final hidden state at the end-of-text token, as a global text vector."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.models import attention as attnlib
from rdance.models.flux import config as cfglib
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.layers import Embed, LayerNorm, Linear

MODEL_TYPES = ("clip_text_model",)
ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    STRICT = False
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"


class Layer(nnx.Module):
    """One CLIP encoder layer (pre-norm attention + MLP); causal in the text tower, not in the
    vision tower (rdance.models.clip), which shares it."""

    def __init__(self, cfg, rngs, causal: bool = True):
        d, m = cfg.hidden_size, cfg.intermediate_size
        lin = lambda i, o, axes: Linear(i, o, axes=axes, rngs=rngs,  # noqa: E731
                                        param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))
        self.layer_norm1 = LayerNorm(d, eps=cfg.layer_norm_eps)
        self.q_proj, self.k_proj = lin(d, d, ("embed", "heads")), lin(d, d, ("embed", "heads"))
        self.v_proj, self.out_proj = lin(d, d, ("embed", "heads")), lin(d, d, ("heads", "embed"))
        self.layer_norm2 = LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1, self.fc2 = lin(d, m, ("embed", "mlp")), lin(m, d, ("mlp", "embed"))
        self.heads = cfg.num_attention_heads
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.impl = cfg.attention
        self.causal = causal

    def __call__(self, x, mask):
        """mask: None or key padding, bool [B, 1, 1, L]."""
        b, s, d = x.shape
        h = self.layer_norm1(x)
        split = lambda t: t.reshape(b, s, self.heads, -1)  # noqa: E731
        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        attn = attnlib.attend(q, k, v, mask=mask, causal=self.causal, impl=self.impl)
        x = x + self.out_proj(attn.reshape(b, s, d))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class CLIPTextModel(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP hidden_act {cfg.hidden_act!r} is not supported")
        attnlib.check(cfg.attention)
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.token_embedding = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=pdt)
        self.position_embedding = Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs,
                                        axes=("length", "embed"), param_dtype=pdt)
        self.layers = make_stack(lambda r: Layer(cfg, r), cfg.num_hidden_layers, rngs)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, input_ids, attention_mask=None):
        """input_ids [B, L] -> (last_hidden_state [B, L, D], pooler_output [B, D])."""
        cfg = self.cfg
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"CLIP input of {length} tokens exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}; truncate in the tokenizer")
        x = self.token_embedding(input_ids) + self.position_embedding.embedding[...][:length][None]
        x = x.astype(cfglib.dtype_of(cfg.dtype) or x.dtype)
        mask = None if attention_mask is None else attention_mask[:, None, None, :] > 0
        x = self.final_layer_norm(run_stack(self.layers, x, mask, remat=cfg.remat))
        # Legacy configs (eos_token_id == 2) pool at the highest token id, which is the EOS token
        # in the original CLIP vocabulary; newer ones pool at the first EOS.
        eos = jnp.argmax(input_ids, -1) if cfg.eos_token_id == 2 else jnp.argmax(input_ids == cfg.eos_token_id, -1)
        return x, x[jnp.arange(x.shape[0]), eos]


# Checkpoints written by transformers 4 prefix every key with 'text_model.'; 5 does not.
LEGACY_PREFIX = "text_model."


def torch_key(path: tuple[str, ...]) -> str:
    if path[0] in ("token_embedding", "position_embedding"):
        return f"embeddings.{path[0]}.weight"
    if path[0] == "final_layer_norm":
        return "final_layer_norm." + path[1]
    part, leaf = path[1], path[-1].replace("kernel", "weight")
    group = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
             "out_proj": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}.get(part, part)
    return f"encoder.layers.{{i}}.{group}.{leaf}"


def normalise_key(key: str) -> str:
    return key[len(LEGACY_PREFIX):] if key.startswith(LEGACY_PREFIX) else key
