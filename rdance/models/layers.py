"""Small building blocks whose parameters carry logical axis names (see rdance.core.sharding)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.core.sharding import param

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
default_kernel_init = nnx.initializers.normal(0.02)


def conv_params(rngs: nnx.Rngs, shape: tuple[int, ...], param_dtype, axes: tuple, use_bias: bool = True,
                torch_init: bool = False, kernel_init: Initializer = default_kernel_init):
    """(kernel, bias or None) of a conv whose kernel is ``shape`` [..., in, out]: ``kernel_init`` and
    zero biases, or torch's defaults for both (``torch_init``: kaiming_uniform with a = sqrt(5), so
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias, fan_in every kernel axis but the last).
    A model trained from scratch as its torch original is should start as that one does: the world's
    Wan VAE, with normal(0.02) kernels and zero biases, had not begun to draw objects after 150
    single-frame steps, where diffusers' own, torch-initialised, had for 2 seeds of 3
    (bench/results/video_refl.md)."""
    if not torch_init:
        kernel = kernel_init(rngs.params(), shape, param_dtype)
        bias = jnp.zeros((shape[-1],), param_dtype)
    else:
        bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
        kernel = jax.random.uniform(rngs.params(), shape, param_dtype, -bound, bound)
        bias = jax.random.uniform(rngs.params(), (shape[-1],), param_dtype, -bound, bound)
    return param(kernel, axes), param(bias, axes[-1:]) if use_bias else None


def matmul_rows(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for x [..., in], w [in, out], as one 2-D matmul over the flattened rows:
    XLA:CPU ran the dot over [batch, length, in] 2-3x slower, forward and backward."""
    return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


class Linear(nnx.Module):
    """y = x @ kernel + bias; ``kernel`` is [in, out] (transpose of torch's nn.Linear.weight)."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
                 rngs: nnx.Rngs, use_bias: bool = True, param_dtype=jnp.float32, dtype=None,
                 kernel_init: Initializer = default_kernel_init):
        self.kernel = param(kernel_init(rngs.params(), (in_features, out_features), param_dtype), axes)
        self.bias = param(jnp.zeros((out_features,), param_dtype), axes[1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = matmul_rows(x.astype(dtype), self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table [vocab, features]; ``attend`` gives logits for tied output heads."""

    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
                 axes: tuple[str, str] = ("vocab", "embed"), param_dtype=jnp.float32, dtype=None):
        self.embedding = param(default_kernel_init(rngs.params(), (num_embeddings, features), param_dtype), axes)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding[...]
        return jnp.take(table, ids, axis=0).astype(self.dtype or table.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        return matmul_rows(x.astype(dtype), self.embedding[...].astype(dtype).T)


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, computed in float32 (as Qwen2/Llama do)."""

    def __init__(self, features: int, *, eps: float = 1e-6, axes: tuple[str] = ("norm",),
                 param_dtype=jnp.float32):
        self.weight = param(jnp.ones((features,), param_dtype), axes)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...].astype(jnp.float32) * x32).astype(dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with optional affine parameters, computed in float32."""

    def __init__(self, features: int, *, eps: float = 1e-6, affine: bool = True,
                 use_bias: bool = True, axes: tuple[str] = ("norm",), param_dtype=jnp.float32):
        self.weight = param(jnp.ones((features,), param_dtype), axes) if affine else None
        self.bias = param(jnp.zeros((features,), param_dtype), axes) if affine and use_bias else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(dtype)


class Conv2d(nnx.Module):
    """2D convolution on NHWC arrays; ``kernel`` is [kh, kw, in, out] (torch's is [out, in, kh, kw]).

    ``padding`` is an int (same on every side, as torch's ``padding=``) or explicit
    ``((top, bottom), (left, right))`` pairs, which the diffusers VAE needs for its asymmetric
    downsampling pad.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs,
                 stride: int = 1, padding=0, use_bias: bool = True,
                 axes: tuple = ("conv", "conv", "channels", "channels"), param_dtype=jnp.float32,
                 dtype=None, kernel_init: Initializer = default_kernel_init, torch_init: bool = False):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel, self.bias = conv_params(rngs, shape, param_dtype, axes, use_bias, torch_init, kernel_init)
        self.stride = stride
        self.padding = ((padding, padding), (padding, padding)) if isinstance(padding, int) else tuple(padding)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply_kernel(x, self.kernel[...], self.padding)

    def apply_kernel(self, x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
        """This layer's convolution (stride, dtype, bias) with a kernel derived from its own."""
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (self.stride, self.stride),
                                         padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class GroupNorm(nnx.Module):
    """GroupNorm over the last (channel) axis of NHWC arrays, statistics in float32 as torch does."""

    def __init__(self, num_groups: int, features: int, *, eps: float = 1e-5,
                 axes: tuple[str] = ("norm",), param_dtype=jnp.float32):
        if features % num_groups:
            raise ValueError(f"GroupNorm: {features} channels do not split into {num_groups} groups")
        self.weight = param(jnp.ones((features,), param_dtype), axes)
        self.bias = param(jnp.zeros((features,), param_dtype), axes)
        self.num_groups = num_groups
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        shape = x.shape
        x32 = x.astype(jnp.float32).reshape(shape[0], -1, self.num_groups, shape[-1] // self.num_groups)
        mean = jnp.mean(x32, axis=(1, 3), keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=(1, 3), keepdims=True)
        y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)
