"""The Wan 2.1 video transformer as diffusers' ``WanTransformer3DModel`` computes it.

A latent video [B, C, F, H, W] is cut into 3D patches (a Conv3d whose stride is its kernel: a
matmul over flattened patches here), each patch a token placed by a rotary embedding over
(frame, row, column). Every block runs self-attention (RMSNorm over all heads on q and k, rotary),
cross-attention to the text tokens (and, in image-to-video checkpoints, a second attention to
CLIP image tokens through extra K/V projections, summed with the text one) and a GELU MLP.
Self-attention and the MLP are modulated by the timestep: one projection per model gives six
vectors, to which each block adds its own learned ``scale_shift_table``. Attribute names
follow diffusers so torch_key maps keys by a few renames.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.core.sharding import param
from rdance.models import attention as attnlib
from rdance.models import convert
from rdance.models.flux import config as cfglib
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.flux.transformer import apply_rope, timestep_embedding
from rdance.models.layers import LayerNorm, Linear, RMSNorm, matmul_rows

CLASS_NAME = "WanTransformer3DModel"
# Released I2V checkpoints carry an RMSNorm for image queries that the forward pass never uses
# (diffusers ignores it on load too): skipped on load, not written on export.
UNUSED_KEYS = (r"^blocks\.\d+\.attn2\.norm_added_q\.",)


@dataclasses.dataclass(frozen=True)
class WanConfig:
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16            # 36 for I2V: noise latents + mask + first-frame latents
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"   # diffusers applies it whatever this says
    eps: float = 1e-6
    image_dim: int | None = None          # I2V: width of the CLIP image tokens (1280)
    added_kv_proj_dim: int | None = None  # I2V: width the extra image K/V project from
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None  # FLF2V: learned positions over both images' tokens
    # rdance-only: parameter and compute dtypes, activation rematerialisation per block, the
    # attention implementation (rdance.models.attention).
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "none"
    attention: str = "auto"

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Rotary channels per head for (frames, height, width), as WanRotaryPosEmbed splits them."""
        hw = 2 * (self.attention_head_dim // 6)
        return self.attention_head_dim - 2 * hw, hw, hw


def _linear(cfg, i, o, axes, rngs, use_bias=True):
    return Linear(i, o, axes=axes, rngs=rngs, use_bias=use_bias,
                  param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))


def rope_tables(grid: tuple[int, int, int], dims: tuple[int, int, int], theta: float = 10000.0):
    """cos/sin [F*H*W, head_dim] for a (frames, height, width) grid of tokens, frame-major.

    Computed on the host in float64, as diffusers builds its tables, then used in float32.
    """
    per_axis = []
    for n, dim in zip(grid, dims):
        freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles = np.outer(np.arange(n, dtype=np.float64), freqs)
        per_axis.append((np.repeat(np.cos(angles), 2, axis=1), np.repeat(np.sin(angles), 2, axis=1)))
    f, h, w = grid

    def table(parts):
        t, y, x = parts
        return np.concatenate([np.broadcast_to(t[:, None, None], (f, h, w, t.shape[-1])),
                               np.broadcast_to(y[None, :, None], (f, h, w, y.shape[-1])),
                               np.broadcast_to(x[None, None, :], (f, h, w, x.shape[-1]))], -1).reshape(f * h * w, -1)
    cos = table([c for c, _ in per_axis])
    sin = table([s for _, s in per_axis])
    return jnp.asarray(cos, jnp.float32), jnp.asarray(sin, jnp.float32)


class PatchEmbed(nnx.Module):
    """diffusers' ``patch_embedding`` Conv3d (kernel = stride = patch) as one matmul over patches;
    ``kernel`` is [pt, ph, pw, in, out] (torch's weight is [out, in, pt, ph, pw])."""

    def __init__(self, cfg: WanConfig, rngs):
        shape = tuple(cfg.patch_size) + (cfg.in_channels, cfg.inner_dim)
        self.kernel = param(nnx.initializers.normal(0.02)(rngs.params(), shape, jnp.dtype(cfg.param_dtype)),
                            (None, None, None, None, "embed"))
        self.bias = param(jnp.zeros((cfg.inner_dim,), jnp.dtype(cfg.param_dtype)), ("embed",))
        self.patch = tuple(cfg.patch_size)
        self.dtype = cfglib.dtype_of(cfg.dtype)

    def __call__(self, x):
        """[B, C, F, H, W] -> tokens [B, F'*H'*W', inner_dim], frame-major."""
        b, c, f, h, w = x.shape
        pt, ph, pw = self.patch
        x = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).transpose(0, 2, 4, 6, 3, 5, 7, 1)
        x = x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)
        dtype = self.dtype or x.dtype
        kernel = self.kernel[...].reshape(-1, self.kernel.shape[-1]).astype(dtype)
        return matmul_rows(x.astype(dtype), kernel) + self.bias[...].astype(dtype)


class MLP(nnx.Module):
    """linear_1 -> activation -> linear_2 (diffusers' TimestepEmbedding, PixArtAlphaTextProjection)."""

    def __init__(self, cfg, in_dim, dim, act, rngs, dtype=None):
        lin = lambda i, o, axes: Linear(  # noqa: E731
            i, o, axes=axes, rngs=rngs, param_dtype=jnp.dtype(cfg.param_dtype),
            dtype=dtype or cfglib.dtype_of(cfg.dtype))
        self.linear_1 = lin(in_dim, dim, (None, "embed"))
        self.linear_2 = lin(dim, dim, ("embed", None))
        self.act = act

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class FeedForward(nnx.Module):
    """diffusers' FeedForward: ``net.0.proj`` -> GELU (tanh or exact) -> ``net.2``."""

    def __init__(self, cfg, dim, inner, out, rngs, approximate=True):
        self.proj_in = _linear(cfg, dim, inner, ("embed", "mlp"), rngs)
        self.proj_out = _linear(cfg, inner, out, ("mlp", "embed"), rngs)
        self.approximate = approximate

    def __call__(self, x):
        return self.proj_out(jax.nn.gelu(self.proj_in(x), approximate=self.approximate))


class ImageEmbedding(nnx.Module):
    """WanImageEmbedding: LayerNorm -> GELU MLP -> LayerNorm over the CLIP image tokens."""

    def __init__(self, cfg: WanConfig, rngs):
        d_in, d = cfg.image_dim, cfg.inner_dim
        self.norm1 = LayerNorm(d_in, eps=1e-5)
        self.ff = FeedForward(cfg, d_in, d_in, d, rngs, approximate=False)
        self.norm2 = LayerNorm(d, eps=1e-5)
        self.pos_embed = None if cfg.pos_embed_seq_len is None else param(
            jnp.zeros((1, cfg.pos_embed_seq_len, d_in), jnp.dtype(cfg.param_dtype)), (None, None, None))

    def __call__(self, x):
        if self.pos_embed is not None:  # first and last frame: two images' tokens side by side
            x = x.reshape(-1, 2 * x.shape[1], x.shape[2]) + self.pos_embed[...].astype(x.dtype)
        return self.norm2(self.ff(self.norm1(x)))


class ConditionEmbedder(nnx.Module):
    """WanTimeTextImageEmbedding: timestep -> (temb, six modulation vectors); text and image tokens
    projected to the model width."""

    def __init__(self, cfg: WanConfig, rngs):
        d = cfg.inner_dim
        # float32 whatever the compute dtype, as diffusers keeps time_embedder (_keep_in_fp32_modules)
        self.time_embedder = MLP(cfg, cfg.freq_dim, d, jax.nn.silu, rngs, dtype=jnp.float32)
        self.time_proj = _linear(cfg, d, 6 * d, ("embed", "mlp"), rngs)
        self.text_embedder = MLP(cfg, cfg.text_dim, d, lambda x: jax.nn.gelu(x, approximate=True), rngs)
        self.image_embedder = ImageEmbedding(cfg, rngs) if cfg.image_dim is not None else None
        self.freq_dim = cfg.freq_dim

    def __call__(self, timestep, text, image, dtype):
        temb = self.time_embedder(timestep_embedding(timestep, self.freq_dim)).astype(dtype)
        proj = self.time_proj(jax.nn.silu(temb))
        text = self.text_embedder(text)
        if image is not None and self.image_embedder is not None:
            image = self.image_embedder(image)
        return temb, proj.reshape(proj.shape[0], 6, -1), text, image


class Attention(nnx.Module):
    """WanAttention: q/k/v/out projections, RMSNorm across all heads on q and k; with ``image``
    the extra K/V (``add_k_proj``/``add_v_proj``, RMSNorm on K) of image-to-video checkpoints."""

    def __init__(self, cfg: WanConfig, rngs, *, image: bool = False):
        d = cfg.inner_dim
        self.to_q = _linear(cfg, d, d, ("embed", "heads"), rngs)
        self.to_k = _linear(cfg, d, d, ("embed", "heads"), rngs)
        self.to_v = _linear(cfg, d, d, ("embed", "heads"), rngs)
        self.to_out = _linear(cfg, d, d, ("heads", "embed"), rngs)
        self.norm_q = RMSNorm(d, eps=cfg.eps)
        self.norm_k = RMSNorm(d, eps=cfg.eps)
        if image:
            self.add_k_proj = _linear(cfg, cfg.added_kv_proj_dim, d, ("embed", "heads"), rngs)
            self.add_v_proj = _linear(cfg, cfg.added_kv_proj_dim, d, ("embed", "heads"), rngs)
            self.norm_added_k = RMSNorm(d, eps=cfg.eps)
        self.image = image
        self.head_dim = cfg.attention_head_dim
        self.impl = cfg.attention

    def _heads(self, x):
        return x.reshape(*x.shape[:2], -1, self.head_dim)

    def _attend(self, q, k, v):
        out = attnlib.attend(q, k, v, impl=self.impl)
        return out.reshape(*out.shape[:2], -1)

    def __call__(self, x, context=None, image=None, rope=None):
        q = self._heads(self.norm_q(self.to_q(x)))
        kv_in = x if context is None else context
        k = self._heads(self.norm_k(self.to_k(kv_in)))
        v = self._heads(self.to_v(kv_in))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = self._attend(q, k, v)
        if self.image:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            out = out + self._attend(q, k_img, self._heads(self.add_v_proj(image)))
        return self.to_out(out)


class Block(nnx.Module):
    """WanTransformerBlock."""

    def __init__(self, cfg: WanConfig, rngs):
        d = cfg.inner_dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, affine=False)
        self.attn1 = Attention(cfg, rngs)
        self.attn2 = Attention(cfg, rngs, image=cfg.added_kv_proj_dim is not None)
        self.norm2 = LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(cfg, d, cfg.ffn_dim, d, rngs)
        self.norm3 = LayerNorm(d, eps=cfg.eps, affine=False)
        self.scale_shift_table = param(
            jax.random.normal(rngs.params(), (1, 6, d), jnp.dtype(cfg.param_dtype)) / math.sqrt(d),
            (None, None, "embed"))

    def __call__(self, x, temb6, context, image, cos, sin):
        # Modulation in float32, as diffusers keeps scale_shift_table and the sums in float32.
        mod = self.scale_shift_table[...].astype(jnp.float32) + temb6.astype(jnp.float32)
        shift, scale, gate, c_shift, c_scale, c_gate = jnp.split(mod, 6, axis=1)  # each [B, 1, D]
        dtype = x.dtype
        h = (self.norm1(x).astype(jnp.float32) * (1 + scale) + shift).astype(dtype)
        x = (x.astype(jnp.float32) + self.attn1(h, rope=(cos, sin)) * gate).astype(dtype)
        h = x if self.norm2 is None else self.norm2(x)
        x = x + self.attn2(h, context=context, image=image)
        h = (self.norm3(x).astype(jnp.float32) * (1 + c_scale) + c_shift).astype(dtype)
        return (x.astype(jnp.float32) + self.ffn(h).astype(jnp.float32) * c_gate).astype(dtype)


class WanTransformer(nnx.Module):
    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
        if len(cfg.patch_size) != 3:
            raise ValueError(f"patch_size {cfg.patch_size} must have 3 entries (frames, height, width)")
        if cfg.attention_head_dim % 2 or min(cfg.rope_dims) <= 0:
            raise ValueError(f"attention_head_dim {cfg.attention_head_dim} must be even and at least 6 "
                             "(rotary channels split over frames, height and width)")
        if (cfg.image_dim is not None or cfg.pos_embed_seq_len is not None) and cfg.added_kv_proj_dim is None:
            raise ValueError("image_dim/pos_embed_seq_len without added_kv_proj_dim: the image tokens "
                             "would have no attention to go to")
        attnlib.check(cfg.attention)  # an unknown name fails here, not at the first call
        self.cfg = cfg
        d = cfg.inner_dim
        out_channels = cfg.out_channels or cfg.in_channels
        self.patch_embedding = PatchEmbed(cfg, rngs)
        self.condition_embedder = ConditionEmbedder(cfg, rngs)
        self.blocks = make_stack(lambda r: Block(cfg, r), cfg.num_layers, rngs)
        self.norm_out = LayerNorm(d, eps=cfg.eps, affine=False)
        self.proj_out = _linear(cfg, d, out_channels * math.prod(cfg.patch_size), ("embed", None), rngs)
        self.scale_shift_table = param(
            jax.random.normal(rngs.params(), (1, 2, d), jnp.dtype(cfg.param_dtype)) / math.sqrt(d),
            (None, None, "embed"))

    def __call__(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None):
        """Mirrors ``WanTransformer3DModel.forward``: latents [B, C, F, H, W], timestep [B] (or a
        scalar) on diffusers' 0..1000 scale, text states [B, L, text_dim], and for image-to-video
        checkpoints the CLIP image states [B, N, image_dim]. Returns [B, out_channels, F, H, W]."""
        cfg = self.cfg
        b, _, f, h, w = hidden_states.shape
        pt, ph, pw = cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latents of {f} frames x {h} x {w} do not divide into patches {cfg.patch_size}")
        grid = (f // pt, h // ph, w // pw)
        if max(grid) > cfg.rope_max_seq_len:
            raise ValueError(f"patch grid {grid} exceeds rope_max_seq_len {cfg.rope_max_seq_len}")
        image = encoder_hidden_states_image
        if cfg.added_kv_proj_dim is not None and image is None:
            raise ValueError("this Wan checkpoint is image-to-video (added_kv_proj_dim is set): pass "
                             "encoder_hidden_states_image, the CLIP image encoder's hidden states")
        if cfg.added_kv_proj_dim is None and image is not None:
            raise ValueError("this Wan checkpoint has no image conditioning (added_kv_proj_dim is None): "
                             "encoder_hidden_states_image must be None")
        dtype = cfglib.dtype_of(cfg.dtype) or hidden_states.dtype
        x = self.patch_embedding(hidden_states.astype(dtype))
        timestep = jnp.asarray(timestep, jnp.float32)
        if timestep.ndim > 1 or timestep.size not in (1, b):
            raise ValueError(f"timestep of shape {timestep.shape}: give one per sample ([{b}]) or one for all; "
                             "per-token timesteps (Wan 2.2 TI2V) are not supported by this port")
        timestep = jnp.broadcast_to(timestep.reshape(-1), (b,))
        temb, temb6, context, image = self.condition_embedder(
            timestep, encoder_hidden_states.astype(dtype), None if image is None else image.astype(dtype), dtype)
        cos, sin = rope_tables(grid, cfg.rope_dims)

        # Tokens pinned to the batch axes (and, with sequence sharding, split along the token axis)
        # before the first block and after the last, as each block's input is in run_stack: the
        # patch embedding, the output projection and their gradients then stay split too.
        x = sharding.constrain_batch(x)
        x = sharding.constrain_batch(run_stack(self.blocks, x, temb6, context, image, cos, sin, remat=cfg.remat))

        shift, scale = jnp.split(self.scale_shift_table[...].astype(jnp.float32)
                                 + temb.astype(jnp.float32)[:, None], 2, axis=1)
        x = (self.norm_out(x).astype(jnp.float32) * (1 + scale) + shift).astype(dtype)
        x = self.proj_out(x)
        x = x.reshape(b, *grid, pt, ph, pw, -1).transpose(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, -1, f, h, w)


def torch_key(path: tuple[str, ...]) -> str | convert.Key:
    """diffusers key for one parameter path ('{i}' stands for the layer of stacked blocks)."""
    if path == ("patch_embedding", "kernel"):
        return convert.Key("patch_embedding.weight", perm=(2, 3, 4, 1, 0))
    key = ".".join(path)
    if path[0] == "blocks":
        key = "blocks.{i}" + key[len("blocks"):]
    return (key.replace(".to_out.", ".to_out.0.")
            .replace("ff.proj_in.", "ff.net.0.proj.").replace("ff.proj_out.", "ff.net.2.")
            .replace("ffn.proj_in.", "ffn.net.0.proj.").replace("ffn.proj_out.", "ffn.net.2.")
            .replace(".kernel", ".weight"))
