"""diffusers' ``AutoencoderKL`` (the FLUX VAE): encode images to latents and decode them back.

Public calls take NCHW arrays like the reference; inside everything is NHWC (the layout XLA's
convolutions prefer). ``decode`` is differentiable and, with ``remat`` set, recomputes each
block's activations in the backward pass, which is what keeps ReFL's reward gradient through a
1024px decode inside memory.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.models.flux import config as cfglib
from rdance.models import attention as attnlib
from rdance.models import remat as rematlib
from rdance.models.layers import Conv2d, GroupNorm, Linear

CLASS_NAME = "AutoencoderKL"


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 16
    norm_num_groups: int = 32
    sample_size: int = 1024
    scaling_factor: float = 0.3611
    shift_factor: float | None = 0.1159
    latents_mean: tuple | None = None
    latents_std: tuple | None = None
    force_upcast: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    mid_block_add_attention: bool = True
    # rdance-only
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "full"
    attention: str = "auto"

    def __post_init__(self):
        attnlib.check(self.attention)
        blocks = set(self.down_block_types) | set(self.up_block_types)
        if blocks - {"DownEncoderBlock2D", "UpDecoderBlock2D"} or self.act_fn != "silu":
            raise ValueError(f"AutoencoderKL variant with blocks {sorted(blocks)} and act_fn "
                             f"{self.act_fn!r} is not supported (FLUX/SD VAEs use Down/UpDecoder blocks, silu)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def _conv(cfg, i, o, k, rngs, **kw):
    return Conv2d(i, o, k, rngs=rngs, param_dtype=jnp.dtype(cfg.param_dtype),
                  dtype=cfglib.dtype_of(cfg.dtype), **kw)


class ResnetBlock(nnx.Module):
    def __init__(self, cfg: VAEConfig, cin, cout, rngs):
        g = cfg.norm_num_groups
        self.norm1 = GroupNorm(g, cin, eps=1e-6)
        self.conv1 = _conv(cfg, cin, cout, 3, rngs, padding=1)
        self.norm2 = GroupNorm(g, cout, eps=1e-6)
        self.conv2 = _conv(cfg, cout, cout, 3, rngs, padding=1)
        self.conv_shortcut = _conv(cfg, cin, cout, 1, rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class SpatialAttention(nnx.Module):
    """Single-head self-attention over all pixels, with a residual (the VAE mid block's)."""

    def __init__(self, cfg: VAEConfig, c, rngs):
        lin = lambda: Linear(c, c, axes=("channels", "channels"), rngs=rngs,  # noqa: E731
                             param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))
        self.group_norm = GroupNorm(cfg.norm_num_groups, c, eps=1e-6)
        self.to_q, self.to_k, self.to_v, self.to_out = lin(), lin(), lin(), lin()
        self.impl = cfg.attention

    def __call__(self, x):
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = (p(t)[:, :, None] for p in (self.to_q, self.to_k, self.to_v))  # one head of width c
        out = attnlib.attend(q, k, v, impl=self.impl)[:, :, 0]
        return x + self.to_out(out).reshape(b, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, cfg: VAEConfig, c, rngs):
        self.resnets = nnx.List([ResnetBlock(cfg, c, c, rngs), ResnetBlock(cfg, c, c, rngs)])
        self.attention = SpatialAttention(cfg, c, rngs) if cfg.mid_block_add_attention else None

    def __call__(self, x):
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class DownBlock(nnx.Module):
    def __init__(self, cfg, cin, cout, num, downsample, rngs):
        self.resnets = nnx.List([ResnetBlock(cfg, cin if j == 0 else cout, cout, rngs) for j in range(num)])
        # torch pads right/bottom by one and convolves with stride 2 and no padding.
        self.downsampler = _conv(cfg, cout, cout, 3, rngs, stride=2, padding=((0, 1), (0, 1))) \
            if downsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsampler(x) if self.downsampler is not None else x


# Which of a 3x3 kernel's taps (columns) land on each of the two low-resolution neighbours
# (rows) that an output pixel of phase p (0: even, 1: odd) sees after nearest x2 upsampling.
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],    # even: neighbours i-1, i
                        [[1, 1, 0], [0, 0, 1]]],   # odd:  neighbours i, i+1
                       np.float32)


def upsample_conv(conv: Conv2d, x: jax.Array) -> jax.Array:
    """``conv`` (3x3, padding 1) applied to the nearest x2 upsampling of x [N, H, W, C].

    Computed as four 2x2 convolutions on x itself, one per output phase, with the taps that
    read the same source pixel summed: the same function with 4/9 of the multiply-adds and
    without the 4x larger upsampled array (the decoder's three upsamplers are a quarter of
    its FLOPs).
    """
    taps = jnp.asarray(_PHASE_TAPS, conv.kernel.dtype)
    kernels = jnp.einsum("pak,qbl,klio->pqabio", taps, taps, conv.kernel[...])
    # Even phases read neighbours (i-1, i): pad before; odd phases (i, i+1): pad after.
    phases = [[conv.apply_kernel(x, kernels[p, q], ((1 - p, p), (1 - q, q))) for q in range(2)] for p in range(2)]
    n, h, w, _ = x.shape
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [N, H, 2, W, 2, C]
    return y.reshape(n, 2 * h, 2 * w, -1)


class UpBlock(nnx.Module):
    def __init__(self, cfg, cin, cout, num, upsample, rngs):
        self.resnets = nnx.List([ResnetBlock(cfg, cin if j == 0 else cout, cout, rngs) for j in range(num)])
        self.upsampler = _conv(cfg, cout, cout, 3, rngs, padding=1) if upsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return upsample_conv(self.upsampler, x) if self.upsampler is not None else x


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, rngs):
        ch = cfg.block_out_channels
        self.conv_in = _conv(cfg, cfg.in_channels, ch[0], 3, rngs, padding=1)
        self.down_blocks = nnx.List([
            DownBlock(cfg, ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, i < len(ch) - 1, rngs)
            for i in range(len(ch))])
        self.mid_block = MidBlock(cfg, ch[-1], rngs)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[-1], eps=1e-6)
        self.conv_out = _conv(cfg, ch[-1], 2 * cfg.latent_channels, 3, rngs, padding=1)

    def __call__(self, x, remat):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = rematlib.call(block, remat, x)
        x = rematlib.call(self.mid_block, remat, x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, rngs):
        ch = tuple(reversed(cfg.block_out_channels))
        self.conv_in = _conv(cfg, cfg.latent_channels, ch[0], 3, rngs, padding=1)
        self.mid_block = MidBlock(cfg, ch[0], rngs)
        self.up_blocks = nnx.List([
            UpBlock(cfg, ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, i < len(ch) - 1, rngs)
            for i in range(len(ch))])
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[-1], eps=1e-6)
        self.conv_out = _conv(cfg, ch[-1], cfg.out_channels, 3, rngs, padding=1)

    def __call__(self, z, remat):
        x = rematlib.call(self.mid_block, remat, self.conv_in(z))
        for block in self.up_blocks:
            x = rematlib.call(block, remat, x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


def _nhwc(x):
    return jnp.transpose(x, (0, 2, 3, 1))


def _nchw(x):
    return jnp.transpose(x, (0, 3, 1, 2))


class AutoencoderKL(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c = cfg.latent_channels
        self.encoder = Encoder(cfg, rngs)
        self.decoder = Decoder(cfg, rngs)
        self.quant_conv = _conv(cfg, 2 * c, 2 * c, 1, rngs) if cfg.use_quant_conv else None
        self.post_quant_conv = _conv(cfg, c, c, 1, rngs) if cfg.use_post_quant_conv else None

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images NCHW in [-1, 1] -> (mean, logvar) of the latent Gaussian, NCHW (``latent_dist``)."""
        self._check_spatial(images, self.cfg.in_channels, self.cfg.downsample_factor, "images")
        moments = self.encoder(_nhwc(images), self.cfg.remat)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(_nchw(moments), 2, axis=1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latents NCHW -> images NCHW in about [-1, 1] (``decode(z).sample``)."""
        self._check_spatial(z, self.cfg.latent_channels, 1, "latents")
        z = _nhwc(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return _nchw(self.decoder(z, self.cfg.remat))

    def encode_latents(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Images -> the scaled latents the transformer sees: (z - shift) * scale; z is the mean,
        or a sample when ``key`` is given."""
        mean, logvar = self.encode(images)
        z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return (z - (self.cfg.shift_factor or 0.0)) * self.cfg.scaling_factor

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Scaled latents (as sampled) -> images: decode(latents / scale + shift)."""
        return self.decode(latents / self.cfg.scaling_factor + (self.cfg.shift_factor or 0.0))

    @staticmethod
    def _check_spatial(x, channels, factor, what):
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} must be NCHW with {channels} channels, got shape {x.shape}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"{what} height and width {x.shape[2:]} must be multiples of {factor}")


def torch_key(path: tuple[str, ...]) -> str:
    key = ".".join(path)
    return (key.replace(".downsampler.", ".downsamplers.0.conv.")
            .replace(".upsampler.", ".upsamplers.0.conv.")
            .replace(".attention.", ".attentions.0.")
            .replace(".to_out.", ".to_out.0.")
            .replace(".kernel", ".weight"))
