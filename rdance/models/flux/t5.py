"""The T5 encoder (transformers' ``T5EncoderModel``) that gives FLUX its per-token text features.

T5 has no absolute positions: each attention layer adds a learned bias per head indexed by a
bucketed relative distance. Only block 0 owns that table in the checkpoint and every block
reuses it, so here it is a top-level parameter and the bias is computed once outside the scan.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.models import attention as attnlib
from rdance.models.flux import config as cfglib
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.layers import Embed, Linear, RMSNorm

MODEL_TYPES = ("t5", "umt5")
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class T5Config:
    STRICT = False  # transformers configs carry generic keys (dropout, token ids) we do not need
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"   # splash has no additive bias: on TPU 'auto' runs T5 with xla

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self):
        name = self.feed_forward_proj.split("-")[-1]
        if name not in ACTIVATIONS:
            raise ValueError(f"T5 feed_forward_proj {self.feed_forward_proj!r} is not supported")
        return ACTIVATIONS[name]


def relative_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional bucket of (key - query) for every pair, [length, length] (host, float32 logs
    as in transformers so bucket edges agree)."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(rel.astype(np.float32) / np.float32(exact))
                         / np.float32(np.log(max_distance / exact)) * np.float32(half - exact))
    large = np.minimum(np.where(rel < exact, 0, large).astype(np.int64), half - 1)
    return buckets + np.where(rel < exact, rel, large)


class Attention(nnx.Module):
    def __init__(self, cfg: T5Config, rngs):
        inner = cfg.num_heads * cfg.d_kv
        lin = lambda i, o, axes: Linear(i, o, axes=axes, rngs=rngs, use_bias=False,  # noqa: E731
                                        param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))
        self.q = lin(cfg.d_model, inner, ("embed", "heads"))
        self.k = lin(cfg.d_model, inner, ("embed", "heads"))
        self.v = lin(cfg.d_model, inner, ("embed", "heads"))
        self.o = lin(inner, cfg.d_model, ("heads", "embed"))
        self.d_kv = cfg.d_kv
        self.impl = cfg.attention

    def __call__(self, x, bias):
        heads = lambda t: t.reshape(*t.shape[:2], -1, self.d_kv)  # noqa: E731
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        # T5 folds the 1/sqrt(d) scale into its initialisation: no scaling here.
        out = attnlib.attend(q, k, v, bias=bias, scale=1.0, impl=self.impl)
        return self.o(out.reshape(*out.shape[:2], -1))


class FeedForward(nnx.Module):
    def __init__(self, cfg: T5Config, rngs):
        lin = lambda i, o, axes: Linear(i, o, axes=axes, rngs=rngs, use_bias=False,  # noqa: E731
                                        param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))
        if cfg.gated:
            self.wi_0 = lin(cfg.d_model, cfg.d_ff, ("embed", "mlp"))
            self.wi_1 = lin(cfg.d_model, cfg.d_ff, ("embed", "mlp"))
        else:
            self.wi = lin(cfg.d_model, cfg.d_ff, ("embed", "mlp"))
        self.wo = lin(cfg.d_ff, cfg.d_model, ("mlp", "embed"))
        self.gated = cfg.gated
        self.act = cfg.activation

    def __call__(self, x):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class Block(nnx.Module):
    def __init__(self, cfg: T5Config, rngs):
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
        self.SelfAttention = Attention(cfg, rngs)
        self.ff_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)
        self.DenseReluDense = FeedForward(cfg, rngs)

    def __call__(self, x, bias):
        x = x + self.SelfAttention(self.attn_norm(x), bias)
        return x + self.DenseReluDense(self.ff_norm(x))


class T5Encoder(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        attnlib.check(cfg.attention)
        self.cfg = cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=jnp.dtype(cfg.param_dtype))
        self.relative_attention_bias = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, rngs=rngs,
                                             axes=(None, "heads"), param_dtype=jnp.dtype(cfg.param_dtype))
        self.block = make_stack(lambda r: Block(cfg, r), cfg.num_layers, rngs)
        self.final_layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(self, input_ids, attention_mask=None):
        """input_ids [B, L] -> last_hidden_state [B, L, d_model] (``T5EncoderModel(...)[0]``)."""
        cfg = self.cfg
        length = input_ids.shape[1]
        buckets = relative_buckets(length, cfg.relative_attention_num_buckets,
                                   cfg.relative_attention_max_distance)
        bias = jnp.transpose(self.relative_attention_bias.embedding[...][buckets], (2, 0, 1))[None]
        bias = bias.astype(jnp.float32)
        if attention_mask is not None:
            bias = bias + jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        x = self.shared(input_ids).astype(cfglib.dtype_of(cfg.dtype) or jnp.dtype(cfg.param_dtype))
        x = run_stack(self.block, x, bias, remat=cfg.remat)
        return self.final_layer_norm(x)


_BLOCK_PARTS = {"attn_norm": "layer.0.layer_norm", "SelfAttention": "layer.0.SelfAttention",
                "ff_norm": "layer.1.layer_norm", "DenseReluDense": "layer.1.DenseReluDense"}
# transformers ties encoder.embed_tokens to shared; some checkpoints store both copies.
TIED = {"encoder.embed_tokens.weight": "shared.weight"}


def torch_key(path: tuple[str, ...]) -> str:
    if path[0] == "shared":
        return "shared.weight"
    if path[0] == "relative_attention_bias":
        return "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if path[0] == "final_layer_norm":
        return "encoder.final_layer_norm.weight"
    rest = ".".join(path[2:]).replace("kernel", "weight")
    return f"encoder.block.{{i}}.{_BLOCK_PARTS[path[1]]}.{rest}"
