"""Small building blocks whose parameters carry logical axis names (see rdance.sharding)."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rdance.sharding import param

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
default_kernel_init = nnx.initializers.normal(0.02)


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
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
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
        return jnp.dot(x.astype(dtype), self.embedding[...].astype(dtype).T)


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
