"""The Qwen2 decoder InternVL uses as its language model, with a KV cache.

The cache is one array per K and V, [layers, batch, slots, kv_heads, head_dim], scanned over layers
together with the parameters. A slot is a column of the padded input (prompt then generated
tokens); RoPE uses the position ids (which skip left padding), causality uses slots.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.core import sharding
from rdance.models import attention as attnlib
from rdance.models import remat as rematlib
from rdance.models.layers import Embed, Linear, RMSNorm

from .config import TextConfig, rope_frequencies
from .vision import activation


class KVCache(NamedTuple):
    k: jax.Array  # [layers, batch, slots, kv_heads, head_dim]
    v: jax.Array

    @classmethod
    def zeros(cls, cfg: TextConfig, batch: int, slots: int, dtype) -> "KVCache":
        shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def rope(positions, cfg: TextConfig):
    """cos, sin of shape [batch, length, head_dim] for integer positions [batch, length]."""
    inv_freq, scale = rope_frequencies(cfg)
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rope(x, cos, sin):
    """x [batch, length, heads, head_dim]; the rotate-half convention of transformers."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str = "auto"):
        e, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(rngs=rngs, param_dtype=dtype)
        self.q = Linear(e, h * hd, axes=("embed", "heads"), **kw)
        self.k = Linear(e, kv * hd, axes=("embed", "kv_heads"), **kw)
        self.v = Linear(e, kv * hd, axes=("embed", "kv_heads"), **kw)
        self.o = Linear(h * hd, e, axes=("heads", "embed"), use_bias=False, **kw)
        self.shape = (h, kv, hd)
        self.impl = attnlib.check(attention)

    def __call__(self, x, cos, sin, mask, kv_slot=None, index=None):
        """mask [batch, queries, keys], or [batch, keys] for causal attention over a whole padded
        sequence (the form TPU's splash kernel takes); with ``kv_slot`` (this layer's cache) keys
        are its slots."""
        b, l, _ = x.shape
        h, kvh, hd = self.shape
        q = apply_rope(self.q(x).reshape(b, l, h, hd), cos, sin)
        k = apply_rope(self.k(x).reshape(b, l, kvh, hd), cos, sin)
        v = self.v(x).reshape(b, l, kvh, hd)
        if kv_slot is not None:
            ck, cv = kv_slot
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
            kv_slot = (k, v)
        # Grouped-query attention without repeating K/V (attend groups queries per KV head).
        causal = mask.ndim == 2
        mask = mask[:, None, None, :] if causal else mask[:, None]
        out = attnlib.attend(q, k, v, mask=mask, causal=causal, impl=self.impl).reshape(b, l, h * hd)
        return self.o(out), kv_slot


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str = "auto"):
        e, m = cfg.hidden_size, cfg.intermediate_size
        kw = dict(rngs=rngs, param_dtype=dtype, use_bias=False)
        self.input_norm = RMSNorm(e, eps=cfg.rms_norm_eps, param_dtype=dtype)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, attention=attention)
        self.post_attn_norm = RMSNorm(e, eps=cfg.rms_norm_eps, param_dtype=dtype)
        self.gate = Linear(e, m, axes=("embed", "mlp"), **kw)
        self.up = Linear(e, m, axes=("embed", "mlp"), **kw)
        self.down = Linear(m, e, axes=("mlp", "embed"), **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x, cos, sin, mask, kv_slot=None, index=None):
        a, kv_slot = self.attn(self.input_norm(x), cos, sin, mask, kv_slot, index)
        x = x + a
        y = self.post_attn_norm(x)
        return x + self.down(self.act(self.gate(y)) * self.up(y)), kv_slot


class Qwen2(nnx.Module):
    def __init__(self, cfg: TextConfig, *, tie_word_embeddings: bool, rngs: nnx.Rngs,
                 dtype=jnp.float32, remat: str = "none", attention: str = "auto"):
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, param_dtype=dtype)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return DecoderLayer(cfg, rngs=rngs, dtype=dtype, attention=attention)
        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=dtype)
        self.lm_head = None if tie_word_embeddings else Linear(
            cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False,
            rngs=rngs, param_dtype=dtype)
        self.remat = remat

    def __call__(self, x, positions, mask, cache: KVCache | None = None, index=None):
        """x: input embeddings [batch, length, embed]; mask [batch, queries, keys] or, causal over
        the whole sequence, [batch, keys] (real tokens); returns final-normed hidden states, cache."""
        cos, sin = rope(positions, self.cfg)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
        def body(x, layer, kv_slot):
            return rematlib.call(layer, self.remat, sharding.constrain_batch(x), cos, sin, mask, kv_slot, index)
        kv = None if cache is None else (cache.k, cache.v)
        x, kv = body(x, self.layers, kv)
        return self.norm(x), (None if cache is None else KVCache(*kv))

    def logits(self, hidden):
        if self.lm_head is None:
            return self.embed.attend(hidden)
        return self.lm_head(hidden)
