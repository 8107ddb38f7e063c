"""The FLUX transformer as diffusers' ``FluxTransformer2DModel`` computes it.

Image tokens (packed 2x2 latent patches) and T5 text tokens go through ``num_layers``
double-stream blocks (separate weights per stream, joint attention) and then
``num_single_layers`` single-stream blocks over the concatenated sequence. Every block is
modulated by one conditioning vector: timestep (+ guidance for dev) + pooled CLIP text.
Attribute names follow diffusers so torch_key maps keys by a few renames.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.models import attention as attnlib
from rdance.models.flux import config as cfglib
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.layers import LayerNorm, Linear, RMSNorm


@dataclasses.dataclass(frozen=True)
class FluxConfig:
    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    # rdance-only: parameter and compute dtypes, activation rematerialisation per block, the
    # attention implementation (rdance.models.attention).
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


CLASS_NAME = "FluxTransformer2DModel"


def _linear(cfg, i, o, axes, rngs, use_bias=True):
    return Linear(i, o, axes=axes, rngs=rngs, use_bias=use_bias,
                  param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding, cos half first (diffusers' Timesteps with flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rope_tables(ids: jax.Array, axes_dims, theta: float = 10000.0):
    """cos/sin tables [S, head_dim] for 3-axis position ids [S, 3], each frequency repeated twice."""
    cos, sin = [], []
    for axis, dim in enumerate(axes_dims):
        # Frequencies in float64 on the host, as diffusers computes them, then used in float32.
        freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)
        angles = ids[:, axis].astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None]
        cos.append(jnp.repeat(jnp.cos(angles), 2, axis=-1))
        sin.append(jnp.repeat(jnp.sin(angles), 2, axis=-1))
    return jnp.concatenate(cos, -1), jnp.concatenate(sin, -1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (x0, x1) of x [B, S, H, D]."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    out = x.astype(jnp.float32) * cos[None, :, None] + rotated.astype(jnp.float32) * sin[None, :, None]
    return out.astype(x.dtype)


def attention(q, k, v, impl: str = "auto"):
    """Softmax attention over [B, S, H, D] (rdance.models.attention), heads merged in the output."""
    out = attnlib.attend(q, k, v, impl=impl)
    return out.reshape(*out.shape[:2], -1)


class MLPEmbedder(nnx.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, cfg, in_dim, dim, rngs):
        self.linear_1 = _linear(cfg, in_dim, dim, (None, "embed"), rngs)
        self.linear_2 = _linear(cfg, dim, dim, (None, "embed"), rngs)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TimeTextEmbed(nnx.Module):
    def __init__(self, cfg: FluxConfig, rngs):
        d = cfg.inner_dim
        self.timestep_embedder = MLPEmbedder(cfg, 256, d, rngs)
        self.guidance_embedder = MLPEmbedder(cfg, 256, d, rngs) if cfg.guidance_embeds else None
        self.text_embedder = MLPEmbedder(cfg, cfg.pooled_projection_dim, d, rngs)

    def __call__(self, timestep, guidance, pooled):
        dtype = pooled.dtype
        emb = self.timestep_embedder(timestep_embedding(timestep).astype(dtype))
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this FLUX checkpoint has guidance_embeds=True (dev): pass guidance")
            emb = emb + self.guidance_embedder(timestep_embedding(guidance).astype(dtype))
        return emb + self.text_embedder(pooled)


class AdaNorm(nnx.Module):
    """LayerNorm without affine, then shift/scale from the conditioning vector; returns gates too."""

    def __init__(self, cfg, chunks, rngs):
        self.linear = _linear(cfg, cfg.inner_dim, chunks * cfg.inner_dim, ("embed", "mlp"), rngs)
        self.norm = LayerNorm(cfg.inner_dim, eps=1e-6, affine=False)
        self.chunks = chunks

    def __call__(self, x, temb):
        return jnp.split(self.linear(jax.nn.silu(temb)), self.chunks, axis=-1)


def _modulate(norm, x, shift, scale):
    return norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nnx.Module):
    """q/k/v projections with per-head RMSNorm; the ``added`` projections are the text stream's."""

    def __init__(self, cfg: FluxConfig, rngs, *, added: bool, out: bool):
        d, hd = cfg.inner_dim, cfg.attention_head_dim
        self.to_q = _linear(cfg, d, d, ("embed", "heads"), rngs)
        self.to_k = _linear(cfg, d, d, ("embed", "heads"), rngs)
        self.to_v = _linear(cfg, d, d, ("embed", "heads"), rngs)
        self.norm_q = RMSNorm(hd, eps=1e-6)
        self.norm_k = RMSNorm(hd, eps=1e-6)
        self.to_out = _linear(cfg, d, d, ("heads", "embed"), rngs) if out else None
        if added:
            self.add_q_proj = _linear(cfg, d, d, ("embed", "heads"), rngs)
            self.add_k_proj = _linear(cfg, d, d, ("embed", "heads"), rngs)
            self.add_v_proj = _linear(cfg, d, d, ("embed", "heads"), rngs)
            self.norm_added_q = RMSNorm(hd, eps=1e-6)
            self.norm_added_k = RMSNorm(hd, eps=1e-6)
            self.to_add_out = _linear(cfg, d, d, ("heads", "embed"), rngs)
        self.head_dim = hd
        self.impl = cfg.attention

    def _heads(self, x):
        return x.reshape(*x.shape[:2], -1, self.head_dim)

    def qkv(self, x, added=False):
        if added:
            q, k, v = self.add_q_proj(x), self.add_k_proj(x), self.add_v_proj(x)
            return self.norm_added_q(self._heads(q)), self.norm_added_k(self._heads(k)), self._heads(v)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        return self.norm_q(self._heads(q)), self.norm_k(self._heads(k)), self._heads(v)


def _attend(qkv_parts, cos, sin, impl):
    q, k, v = (jnp.concatenate(p, axis=1) for p in zip(*qkv_parts))
    return attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, impl)


class FeedForward(nnx.Module):
    """diffusers' FeedForward with gelu-approximate: ``net.0.proj`` -> tanh GELU -> ``net.2``."""

    def __init__(self, cfg, rngs):
        d = cfg.inner_dim
        self.proj_in = _linear(cfg, d, 4 * d, ("embed", "mlp"), rngs)
        self.proj_out = _linear(cfg, 4 * d, d, ("mlp", "embed"), rngs)

    def __call__(self, x):
        return self.proj_out(jax.nn.gelu(self.proj_in(x), approximate=True))


class DoubleBlock(nnx.Module):
    """FluxTransformerBlock: image and text streams with their own weights, one joint attention."""

    def __init__(self, cfg: FluxConfig, rngs):
        self.norm1 = AdaNorm(cfg, 6, rngs)
        self.norm1_context = AdaNorm(cfg, 6, rngs)
        self.attn = Attention(cfg, rngs, added=True, out=True)
        self.norm2 = LayerNorm(cfg.inner_dim, eps=1e-6, affine=False)
        self.ff = FeedForward(cfg, rngs)
        self.norm2_context = LayerNorm(cfg.inner_dim, eps=1e-6, affine=False)
        self.ff_context = FeedForward(cfg, rngs)

    def __call__(self, carry, temb, cos, sin):
        img, txt = carry
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(img, temb)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(txt, temb)
        norm_img = _modulate(self.norm1.norm, img, shift, scale)
        norm_txt = _modulate(self.norm1_context.norm, txt, c_shift, c_scale)
        # Text first in the joint sequence, as the rotary ids (txt_ids, img_ids) are ordered.
        out = _attend([self.attn.qkv(norm_txt, added=True), self.attn.qkv(norm_img)], cos, sin, self.attn.impl)
        txt_attn, img_attn = out[:, :txt.shape[1]], out[:, txt.shape[1]:]

        img = img + gate[:, None] * self.attn.to_out(img_attn)
        img = img + gate_mlp[:, None] * self.ff(_modulate(self.norm2, img, shift_mlp, scale_mlp))
        txt = txt + c_gate[:, None] * self.attn.to_add_out(txt_attn)
        txt = txt + c_gate_mlp[:, None] * self.ff_context(
            _modulate(self.norm2_context, txt, c_shift_mlp, c_scale_mlp))
        return img, txt


class SingleBlock(nnx.Module):
    """FluxSingleTransformerBlock: one stream over [text; image], attention and MLP in parallel."""

    def __init__(self, cfg: FluxConfig, rngs):
        d = cfg.inner_dim
        self.norm = AdaNorm(cfg, 3, rngs)
        self.proj_mlp = _linear(cfg, d, 4 * d, ("embed", "mlp"), rngs)
        self.attn = Attention(cfg, rngs, added=False, out=False)
        # Input is [attention output; MLP hidden], packed along the feature axis.
        self.proj_out = _linear(cfg, 5 * d, d, ("mlp", "embed"), rngs)

    def __call__(self, x, temb, cos, sin):
        shift, scale, gate = self.norm(x, temb)
        h = _modulate(self.norm.norm, x, shift, scale)
        mlp = jax.nn.gelu(self.proj_mlp(h), approximate=True)
        attn = _attend([self.attn.qkv(h)], cos, sin, self.attn.impl)
        return x + gate[:, None] * self.proj_out(jnp.concatenate([attn, mlp], axis=-1))


class FluxTransformer(nnx.Module):
    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        out_channels = cfg.out_channels or cfg.in_channels
        if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
            raise ValueError(f"axes_dims_rope {cfg.axes_dims_rope} must sum to attention_head_dim "
                             f"{cfg.attention_head_dim}")
        attnlib.check(cfg.attention)  # an unknown name fails here, not at the first call
        self.cfg = cfg
        self.time_text_embed = TimeTextEmbed(cfg, rngs)
        self.context_embedder = _linear(cfg, cfg.joint_attention_dim, d, (None, "embed"), rngs)
        self.x_embedder = _linear(cfg, cfg.in_channels, d, (None, "embed"), rngs)
        self.transformer_blocks = make_stack(lambda r: DoubleBlock(cfg, r), cfg.num_layers, rngs)
        self.single_transformer_blocks = make_stack(lambda r: SingleBlock(cfg, r), cfg.num_single_layers, rngs)
        self.norm_out = AdaNorm(cfg, 2, rngs)
        self.proj_out = _linear(cfg, d, cfg.patch_size ** 2 * out_channels, ("embed", None), rngs)

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep,
                 img_ids, txt_ids, guidance=None):
        """Mirrors ``FluxTransformer2DModel.forward``: timestep and guidance in [0, 1] (scaled by
        1000 here, as diffusers does); ids are [S, 3] without a batch axis."""
        cfg = self.cfg
        dtype = cfglib.dtype_of(cfg.dtype) or hidden_states.dtype
        img = self.x_embedder(hidden_states.astype(dtype))
        timestep = jnp.broadcast_to(jnp.asarray(timestep, dtype), (img.shape[0],)) * 1000
        if guidance is not None:
            guidance = jnp.broadcast_to(jnp.asarray(guidance, dtype), (img.shape[0],)) * 1000
        temb = self.time_text_embed(timestep, guidance, pooled_projections.astype(dtype))
        txt = self.context_embedder(encoder_hidden_states.astype(dtype))
        cos, sin = rope_tables(jnp.concatenate([txt_ids, img_ids], axis=0), cfg.axes_dims_rope)

        img, txt = run_stack(self.transformer_blocks, (img, txt), temb, cos, sin, remat=cfg.remat)
        x = jnp.concatenate([txt, img], axis=1)
        x = run_stack(self.single_transformer_blocks, x, temb, cos, sin, remat=cfg.remat)
        img = x[:, txt.shape[1]:]

        scale, shift = self.norm_out(img, temb)
        return self.proj_out(_modulate(self.norm_out.norm, img, shift, scale))


def torch_key(path: tuple[str, ...]) -> str:
    """diffusers key for one parameter path ('{i}' stands for the layer of stacked blocks)."""
    key = ".".join(path)
    for stack in ("transformer_blocks", "single_transformer_blocks"):
        if path[0] == stack:
            key = f"{stack}.{{i}}" + key[len(stack):]
    return (key.replace("attn.to_out.", "attn.to_out.0.")
            .replace("ff.proj_in.", "ff.net.0.proj.").replace("ff.proj_out.", "ff.net.2.")
            .replace("ff_context.proj_in.", "ff_context.net.0.proj.")
            .replace("ff_context.proj_out.", "ff_context.net.2.")
            .replace(".kernel", ".weight"))
