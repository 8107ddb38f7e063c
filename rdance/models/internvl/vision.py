"""InternViT, the InternVL vision encoder, in both flavours transformers implements.

300M flavour (InternVL3 1B-14B): LayerNorm, no QK-norm. 6B flavour (38B/78B): RMSNorm and QK-norm
(over the whole embedding, not per head). Both use layer scale (``lambda_1``/``lambda_2``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.models import attention as attnlib
from rdance.models import remat as rematlib
from rdance.models.layers import LayerNorm, Linear, RMSNorm
from rdance.core import sharding
from rdance.core.sharding import param

from .config import VisionConfig


def activation(name: str):
    """transformers' ACT2FN entries used by InternVL/Qwen2 ('gelu' is the exact erf form)."""
    table = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
             "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
             "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
             "silu": jax.nn.silu, "relu": jax.nn.relu}
    if name not in table:
        raise ValueError(f"activation {name!r} is not supported; known: {sorted(table)}")
    return table[name]


def make_norm(cfg: VisionConfig, features: int):
    if cfg.norm_type == "rms_norm":
        return RMSNorm(features, eps=cfg.layer_norm_eps)
    return LayerNorm(features, eps=cfg.layer_norm_eps)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str = "auto"):
        d = cfg.hidden_size
        kw = dict(rngs=rngs, param_dtype=dtype)
        self.impl = attnlib.check(attention)
        self.q = Linear(d, d, axes=("embed", "heads"), use_bias=cfg.attention_bias, **kw)
        self.k = Linear(d, d, axes=("embed", "heads"), use_bias=cfg.attention_bias, **kw)
        self.v = Linear(d, d, axes=("embed", "heads"), use_bias=cfg.attention_bias, **kw)
        self.proj = Linear(d, d, axes=("heads", "embed"), **kw)
        # transformers builds these with the RMSNorm default eps (1e-6), not config.layer_norm_eps.
        self.q_norm = RMSNorm(d, eps=1e-6, param_dtype=dtype) if cfg.use_qk_norm else None
        self.k_norm = RMSNorm(d, eps=1e-6, param_dtype=dtype) if cfg.use_qk_norm else None
        self.num_heads = cfg.num_heads

    def __call__(self, x):
        b, s, d = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        split = lambda t: t.reshape(b, s, self.num_heads, d // self.num_heads)
        return self.proj(attnlib.attend(split(q), split(k), split(v), impl=self.impl).reshape(b, s, d))


class VisionLayer(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, attention: str = "auto"):
        d = cfg.hidden_size
        self.norm1 = make_norm(cfg, d)
        self.attn = VisionAttention(cfg, rngs=rngs, dtype=dtype, attention=attention)
        self.lambda_1 = param(jnp.full((d,), 0.1, dtype), ("norm",))
        self.norm2 = make_norm(cfg, d)
        self.fc1 = Linear(d, cfg.intermediate_size, axes=("embed", "mlp"), rngs=rngs, param_dtype=dtype)
        self.fc2 = Linear(cfg.intermediate_size, d, axes=("mlp", "embed"), rngs=rngs, param_dtype=dtype)
        self.lambda_2 = param(jnp.full((d,), 0.1, dtype), ("norm",))
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        x = x + self.lambda_1[...] * self.attn(self.norm1(x))
        return x + self.lambda_2[...] * self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTower(nnx.Module):
    """pixel_values [tiles, C, H, W] -> hidden states [tiles, 1 + patches, D] (CLS first)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, remat: str = "none",
                 attention: str = "auto"):
        d, p = cfg.hidden_size, cfg.patch_size
        init = nnx.initializers.normal(0.02)
        self.cfg = cfg
        self.patch_kernel = param(init(rngs.params(), (p, p, cfg.num_channels, d), dtype),
                                  ("conv", "conv", "channels", "embed"))
        self.patch_bias = param(jnp.zeros((d,), dtype), ("embed",))
        self.cls_token = param(jnp.zeros((d,), dtype), ("embed",))
        self.mask_token = param(jnp.zeros((d,), dtype), ("embed",)) if cfg.use_mask_token else None
        self.position_embeddings = (
            param(jnp.zeros((cfg.num_patches + 1, d), dtype), ("length", "embed"))
            if cfg.use_absolute_position_embeddings else None)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return VisionLayer(cfg, rngs=rngs, dtype=dtype, attention=attention)
        self.layers = make_layers(rngs)
        self.final_norm = None if cfg.use_mean_pooling else LayerNorm(d, eps=cfg.layer_norm_eps)
        rematlib.policy(remat)  # an unknown name fails here, not at the first call
        self.remat = remat

    def __call__(self, pixel_values):
        cfg = self.cfg
        n, c, h, w = pixel_values.shape
        if (c, h, w) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"pixel_values tiles must be [{cfg.num_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}] (config image_size), got {(c, h, w)}")
        p, g = cfg.patch_size, cfg.image_size // cfg.patch_size
        kernel = self.patch_kernel[...]
        # A stride-p convolution is a matmul over non-overlapping p x p patches.
        patches = pixel_values.astype(kernel.dtype).reshape(n, c, g, p, g, p)
        x = jnp.einsum("ncipjq,pqcd->nijd", patches, kernel).reshape(n, g * g, -1)
        x = x + self.patch_bias[...]
        cls = jnp.broadcast_to(self.cls_token[...], (n, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings[...]

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, layer):
            return rematlib.call(layer, self.remat, sharding.constrain_batch(x))
        x = body(x, self.layers)
        return x if self.final_norm is None else self.final_norm(x)
