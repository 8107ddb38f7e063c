"""diffusers' ``AutoencoderKLWan`` (the Wan 2.1 causal 3D VAE): encode videos to latents and back.

Public calls take NCTHW arrays like the reference; inside everything is NTHWC (channels last).

**Causality and the feature cache.** Every 3x3x3 convolution is causal in time: it pads two
frames on the past side only. diffusers runs a clip chunk by chunk (encode: the first frame,
then chunks of 4 frames; decode: one latent frame at a time) and hands each causal convolution
the last two frames of its input from the chunk before (``feat_cache``), so a long clip costs
one chunk's activations. Here the same happens as a ``lax.scan`` over the chunks after the
first: the carry is the cache, a pytree with one entry per cached layer, so memory and compile
time do not grow with the clip's length and the whole thing is differentiable. The first chunk
is a separate (unscanned) call because the resampling layers treat it differently, as the
reference does: the temporal downsampler passes the first frame through and the temporal
upsampler does not double it, so T frames encode to 1 + (T - 1) / 4 latent frames and T latent
frames decode to 1 + 4 (T - 1) frames.

``decode`` is differentiable (ReFL's reward gradient flows through it); with the config's
``remat`` set, each block's activations are recomputed in the backward pass.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.core.sharding import param
from rdance.models import attention as attnlib
from rdance.models import remat as rematlib
from rdance.models.convert import Key
from rdance.models.flux import config as cfglib
from rdance.models.flux.vae import upsample_conv
from rdance.models.layers import Conv2d, conv_params

CLASS_NAME = "AutoencoderKLWan"
CACHE_T = 2          # frames of its input a causal 3x3x3 convolution keeps for the next chunk
ENCODE_CHUNK = 4     # frames per encoder chunk after the first frame (diffusers' constant)

_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)   # sic: diffusers' spelling
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = _WAN21_MEAN
    latents_std: tuple[float, ...] = _WAN21_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8
    # rdance-only
    param_dtype: str = "float32"
    dtype: str | None = None
    remat: str = "full"
    attention: str = "auto"

    def __post_init__(self):
        attnlib.check(self.attention)
        rematlib.policy(self.remat)
        if self.is_residual or self.patch_size is not None:
            raise ValueError("AutoencoderKLWan with is_residual/patch_size is the Wan 2.2 VAE, which this "
                             "port does not model (Wan 2.1: is_residual=false, patch_size=null)")
        if self.attn_scales:
            raise ValueError(f"AutoencoderKLWan attn_scales={list(self.attn_scales)} is not supported "
                             "(Wan 2.1 uses [])")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample {list(self.temperal_downsample)} needs one entry per "
                             f"downsampling level ({len(self.dim_mult) - 1} for dim_mult {list(self.dim_mult)})")
        if sum(map(bool, self.temperal_downsample)) > 2:
            raise ValueError("more than two temporal downsamplings do not fit the 4-frame encoder chunks")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/latents_std need z_dim={self.z_dim} entries, got "
                             f"{len(self.latents_mean)} and {len(self.latents_std)}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(map(bool, self.temperal_downsample))


def _kw(cfg):
    return dict(param_dtype=jnp.dtype(cfg.param_dtype), dtype=cfglib.dtype_of(cfg.dtype))


class CausalConv3d(nnx.Module):
    """3D convolution on NTHWC arrays, padded in time on the past side only (``WanCausalConv3d``).

    ``kernel`` is [kt, kh, kw, in, out] (torch's is [out, in, kt, kh, kw]). ``padding`` is
    torch's (t, h, w): h and w pad both sides, time pads 2t frames before the clip. ``past``
    frames, when given, stand in for as many of those zero frames (the chunk cache)."""

    def __init__(self, in_features: int, out_features: int, kernel_size, *, rngs: nnx.Rngs,
                 stride=1, padding=0, param_dtype=jnp.float32, dtype=None):
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        # torch's default init, as diffusers' fresh VAE: a Wan VAE trains from scratch only in the
        # world, and with normal(0.02) kernels and zero biases it was slower than diffusers' to start
        # drawing objects there (rdance.models.layers.conv_params).
        self.kernel, self.bias = conv_params(rngs, k + (in_features, out_features), param_dtype,
                                             ("conv", "conv", "conv", "channels", "channels"), torch_init=True)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad, self.space_pad = 2 * pt, ((ph, ph), (pw, pw))
        self.dtype = dtype

    def __call__(self, x: jax.Array, past: jax.Array | None = None) -> jax.Array:
        pad = self.time_pad
        if past is not None and pad:
            x, pad = jnp.concatenate([past.astype(x.dtype), x], axis=1), pad - past.shape[1]
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(x.astype(dtype), self.kernel[...].astype(dtype), self.stride,
                                         ((pad, 0),) + self.space_pad,
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return y + self.bias[...].astype(dtype)


def split_width(tree):
    """Under sequence sharding (rdance.core.sharding.activations_on with a 'tokens' rule), the
    [B, T, H, W, C] arrays of ``tree`` split along their width over the token axes (and their batch
    over the other data-parallel axes), unchanged otherwise. A clip's frames are the VAE's tokens
    but its causal convolutions run chunk by chunk in time, so the split is spatial: XLA
    partitions each convolution by width and exchanges the one-column halos its kernel needs. A
    width that does not divide is left unsplit."""
    mesh, seq = sharding.sequence_axes()
    if not seq:
        return tree
    batch_axes = tuple(a for a in sharding.BATCH_AXES if a not in seq and mesh.shape[a] > 1)
    parts, batch_parts = math.prod(mesh.shape[a] for a in seq), math.prod(mesh.shape[a] for a in batch_axes)

    def constrain(x):
        if x.ndim != 5 or x.shape[3] % parts:
            return x
        batch = batch_axes if batch_axes and x.shape[0] % batch_parts == 0 else None
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, P(batch, None, None, seq if len(seq) > 1 else seq[0], None)))
    return jax.tree.map(constrain, tree)


def cached_conv(conv: CausalConv3d, x, past):
    """``conv`` over x after the ``past`` frames (None: the first chunk, zeros), and the new
    cache: the last CACHE_T frames of the input so far."""
    if past is None:
        past = jnp.zeros((x.shape[0], CACHE_T) + x.shape[2:], x.dtype)
    return conv(x, past), jnp.concatenate([past.astype(x.dtype), x], axis=1)[:, -CACHE_T:]


class RMSNorm(nnx.Module):
    """``WanRMS_norm``: x / max(|x|_2, 1e-12) * sqrt(C) * gamma over the channel axis, in float32.
    ``gamma`` keeps torch's size-1 axes, moved in front ([1, 1, 1, C] or, for images, [1, 1, C])."""

    def __init__(self, dim: int, *, images: bool = False, param_dtype=jnp.float32):
        lead = 2 if images else 3
        self.gamma = param(jnp.ones((1,) * lead + (dim,), param_dtype), (None,) * lead + ("norm",))
        self.scale = dim ** 0.5

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32).reshape(-1)
        return y.astype(x.dtype)


def _frames(fn, x):
    """A 2D (NHWC) function applied to every frame of x [B, T, H, W, C]."""
    b, t = x.shape[:2]
    y = fn(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape((b, t) + y.shape[1:])


class ResidualBlock(nnx.Module):
    def __init__(self, cfg: WanVAEConfig, cin: int, cout: int, rngs):
        kw = _kw(cfg)
        self.norm1 = RMSNorm(cin, param_dtype=kw["param_dtype"])
        self.conv1 = CausalConv3d(cin, cout, 3, padding=1, rngs=rngs, **kw)
        self.norm2 = RMSNorm(cout, param_dtype=kw["param_dtype"])
        self.conv2 = CausalConv3d(cout, cout, 3, padding=1, rngs=rngs, **kw)
        self.conv_shortcut = CausalConv3d(cin, cout, 1, rngs=rngs, **kw) if cin != cout else None

    def __call__(self, x, cache):
        c1, c2 = (None, None) if cache is None else cache
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x, n1 = cached_conv(self.conv1, jax.nn.silu(self.norm1(x)), c1)
        x, n2 = cached_conv(self.conv2, jax.nn.silu(self.norm2(x)), c2)   # dropout: inference only
        return x + h, (n1, n2)


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame, with a residual."""

    def __init__(self, cfg: WanVAEConfig, dim: int, rngs):
        kw = _kw(cfg)
        self.norm = RMSNorm(dim, images=True, param_dtype=kw["param_dtype"])
        self.to_qkv = Conv2d(dim, 3 * dim, 1, rngs=rngs, torch_init=True, **kw)
        self.proj = Conv2d(dim, dim, 1, rngs=rngs, torch_init=True, **kw)
        self.impl = cfg.attention

    def _frame(self, x):
        n, h, w, c = x.shape
        q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(n, h * w, 1, 3 * c), 3, axis=-1)
        out = attnlib.attend(q, k, v, impl=self.impl)
        return x + self.proj(out.reshape(n, h, w, c))

    def __call__(self, x):
        return _frames(self._frame, x)


class MidBlock(nnx.Module):
    def __init__(self, cfg: WanVAEConfig, dim: int, rngs):
        self.resnets = nnx.List([ResidualBlock(cfg, dim, dim, rngs), ResidualBlock(cfg, dim, dim, rngs)])
        self.attentions = nnx.List([AttentionBlock(cfg, dim, rngs)])

    def __call__(self, x, cache):
        c0, c1 = (None, None) if cache is None else cache
        x, n0 = self.resnets[0](x, c0)
        x, n1 = self.resnets[1](self.attentions[0](x), c1)
        return x, (n0, n1)


class Resample(nnx.Module):
    """``WanResample``: 2x spatial up/down sampling per frame; the '3d' modes also double (up) or
    halve (down) the frames with a (3, 1, 1) ``time_conv``. ``resample`` is torch's ``resample.1``."""

    def __init__(self, cfg: WanVAEConfig, dim: int, mode: str, rngs):
        kw = _kw(cfg)
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = Conv2d(dim, dim // 2, 3, padding=1, rngs=rngs, torch_init=True, **kw)
        else:   # torch pads right/bottom by one and convolves with stride 2 and no padding
            self.resample = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs, torch_init=True, **kw)
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), rngs=rngs, **kw)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), rngs=rngs, **kw)
        else:
            self.time_conv = None

    def __call__(self, x, cache):
        new = ()
        if self.mode == "upsample3d":
            if cache is None:
                # The first chunk keeps its frame count; the next one starts from zero padding
                # (diffusers' "Rep" marker), not from this chunk's frames.
                new = jnp.zeros((x.shape[0], CACHE_T) + x.shape[2:], x.dtype)
            else:
                y, new = cached_conv(self.time_conv, x, cache)
                b, t, h, w, c = x.shape
                # Channels [0, c) are frame 2t, [c, 2c) frame 2t + 1.
                x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
            x = _frames(lambda f: upsample_conv(self.resample, f), x)
        elif self.mode == "upsample2d":
            x = _frames(lambda f: upsample_conv(self.resample, f), x)
        else:
            x = _frames(self.resample, x)
            if self.mode == "downsample3d":
                # The first chunk's frame passes; later chunks convolve (stride 2, no padding)
                # over the previous chunk's last frame and their own.
                new = x[:, -1:]
                if cache is not None:
                    x = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
        return x, new


class UpBlock(nnx.Module):
    def __init__(self, cfg: WanVAEConfig, cin: int, cout: int, mode: str | None, rngs):
        self.resnets = nnx.List([ResidualBlock(cfg, cin if j == 0 else cout, cout, rngs)
                                 for j in range(cfg.num_res_blocks + 1)])
        self.upsamplers = nnx.List([Resample(cfg, cout, mode, rngs)]) if mode else None

    def __call__(self, x, cache):
        caches = [None] * (len(self.resnets) + 1) if cache is None else cache
        new = []
        for resnet, c in zip(self.resnets, caches):
            x, n = resnet(x, c)
            new.append(n)
        if self.upsamplers is not None:
            x, n = self.upsamplers[0](x, caches[-1])
            new.append(n)
        return x, tuple(new)


def _blocks(blocks, x, cache, remat):
    caches = [None] * len(blocks) if cache is None else cache
    new = []
    for block, c in zip(blocks, caches):
        x, n = split_width(rematlib.call(block, remat, x, c))
        new.append(n)
    return x, tuple(new)


class Encoder(nnx.Module):
    def __init__(self, cfg: WanVAEConfig, rngs):
        kw = _kw(cfg)
        dims = [cfg.base_dim * u for u in (1,) + tuple(cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, rngs=rngs, **kw)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cfg, cin, cout, rngs))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(cfg, cout, mode, rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(cfg, dims[-1], rngs)
        self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, rngs=rngs, **kw)
        self.remat = cfg.remat

    def __call__(self, x, cache):
        c_in, c_down, c_mid, c_out = (None,) * 4 if cache is None else cache
        x, n_in = cached_conv(self.conv_in, x, c_in)
        x, n_down = _blocks(self.down_blocks, x, c_down, self.remat)
        x, n_mid = rematlib.call(self.mid_block, self.remat, x, c_mid)
        x, n_out = cached_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), c_out)
        return x, (n_in, n_down, n_mid, n_out)


class Decoder(nnx.Module):
    def __init__(self, cfg: WanVAEConfig, rngs):
        kw = _kw(cfg)
        base = cfg.decoder_base_dim or cfg.base_dim
        mult = tuple(cfg.dim_mult)
        dims = [base * u for u in (mult[-1],) + mult[::-1]]
        upsample = tuple(cfg.temperal_downsample)[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, rngs=rngs, **kw)
        self.mid_block = MidBlock(cfg, dims[0], rngs)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2   # the upsampler before halved the channels
            mode = None
            if i != len(mult) - 1:
                mode = "upsample3d" if upsample[i] else "upsample2d"
            blocks.append(UpBlock(cfg, cin, cout, mode, rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, rngs=rngs, **kw)
        self.remat = cfg.remat

    def __call__(self, x, cache):
        c_in, c_mid, c_up, c_out = (None,) * 4 if cache is None else cache
        x, n_in = cached_conv(self.conv_in, x, c_in)
        x, n_mid = split_width(rematlib.call(self.mid_block, self.remat, split_width(x), c_mid))
        x, n_up = _blocks(self.up_blocks, x, c_up, self.remat)
        x, n_out = cached_conv(self.conv_out, jax.nn.silu(self.norm_out(x)), c_out)
        return x, (n_in, n_mid, n_up, n_out)


class AutoencoderKLWan(nnx.Module):
    def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, rngs=rngs, **kw)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1, rngs=rngs, **kw)
        self.decoder = Decoder(cfg, rngs)

    def _run(self, module, x, chunk):
        """``module`` over x [B, T, ...]: the first frame, then chunks of ``chunk`` frames scanned
        with the feature cache as the carry; outputs joined along time."""
        y0, cache = split_width(module(split_width(x[:, :1]), None))
        b, t = x.shape[:2]
        n = (t - 1) // chunk
        if n == 0:
            return y0
        graphdef, state = nnx.split(module)
        rest = x[:, 1:].reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)

        def step(cache, chunk_x):
            # Variables rebuilt inside the scan's trace (nnx refuses ones from another level).
            y, cache = nnx.merge(graphdef, jax.tree.map(lambda v: v, state))(split_width(chunk_x), cache)
            return split_width(cache), split_width(y)
        _, ys = jax.lax.scan(step, cache, rest)
        ys = ys.swapaxes(0, 1)
        ys = ys.reshape((b, -1) + ys.shape[3:])
        return jnp.concatenate([y0, ys], axis=1)

    def encode(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        """video NCTHW in [-1, 1], T = 1 + 4k frames -> (mean, logvar) of the latent Gaussian,
        NCTHW with 1 + k frames (``latent_dist``)."""
        cfg = self.cfg
        self._check(video, cfg.in_channels, cfg.spatial_factor, "video")
        if (video.shape[2] - 1) % ENCODE_CHUNK:
            raise ValueError(f"video has {video.shape[2]} frames; the Wan VAE encodes 1 + 4k frames "
                             "(diffusers silently drops the frames after the last full chunk)")
        moments = self.quant_conv(self._run(self.encoder, _ntc(video), ENCODE_CHUNK))
        mean, logvar = jnp.split(_nct(moments), 2, axis=1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array, clamp: bool = True) -> jax.Array:
        """Unnormalised latents NCTHW (T frames) -> video NCTHW with 1 + 4 (T - 1) frames, clamped to
        [-1, 1] as ``decode(z).sample`` is. Differentiable; ``cfg.remat`` recomputes each block."""
        self._check(z, self.cfg.z_dim, 1, "latents")
        out = _nct(self._run(self.decoder, self.post_quant_conv(_ntc(z)), 1))
        return jnp.clip(out, -1.0, 1.0) if clamp else out

    def _latent_stats(self, dtype):
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        return (jnp.asarray(self.cfg.latents_mean, dtype).reshape(shape),
                jnp.asarray(self.cfg.latents_std, dtype).reshape(shape))

    def encode_latents(self, video: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Video -> the normalised latents the transformer sees, (z - latents_mean) / latents_std;
        z is the mean, or a sample when ``key`` is given."""
        mean, logvar = self.encode(video)
        z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        mu, std = self._latent_stats(z.dtype)
        return (z - mu) / std

    def decode_latents(self, latents: jax.Array, clamp: bool = True) -> jax.Array:
        """Normalised latents (as sampled) -> video: decode(latents * latents_std + latents_mean)."""
        mu, std = self._latent_stats(latents.dtype)
        return self.decode(latents * std + mu, clamp=clamp)

    @staticmethod
    def _check(x, channels, factor, what):
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(f"{what} must be NCTHW with {channels} channels, got shape {x.shape}")
        if x.shape[3] % factor or x.shape[4] % factor:
            raise ValueError(f"{what} height and width {x.shape[3:]} must be multiples of {factor}")


def _ntc(x):
    return jnp.transpose(x, (0, 2, 3, 4, 1))


def clips_to_video(clips) -> jax.Array:
    """uint8 clips [B, F, H, W, 3] -> NCTHW float in [-1, 1], what the VAE encodes."""
    return _nct(jnp.asarray(clips, jnp.float32) / 127.5 - 1.0)


def video_to_clips(video) -> jax.Array:
    """The decoder's NCTHW video in [-1, 1] -> clips [B, F, H, W, 3] float32 in [0, 1] (clipped)."""
    return jnp.clip((_ntc(video.astype(jnp.float32)) + 1.0) * 0.5, 0.0, 1.0)


def _nct(x):
    return jnp.transpose(x, (0, 4, 1, 2, 3))


_CONV3D = {"conv_in", "conv_out", "conv1", "conv2", "conv_shortcut", "time_conv", "quant_conv", "post_quant_conv"}


def torch_key(path: tuple[str, ...]) -> str | Key:
    name = ".".join(path).replace(".resample.", ".resample.1.").replace(".kernel", ".weight")
    if path[-1] == "kernel" and path[-2] in _CONV3D:
        return Key(name, perm=(2, 3, 4, 1, 0))        # OIDHW -> DHWIO
    if path[-1] == "gamma":                            # [C, 1, 1(, 1)] -> [1, 1(, 1), C]
        return Key(name, perm=(1, 2, 0) if path[-2] == "norm" else (1, 2, 3, 0))
    return name
