"""A small MLP: the model the foundation's harness is proven on (toy regression)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.models.layers import Linear


class MLP(nnx.Module):
    def __init__(self, in_features: int, hidden: int, depth: int, out_features: int, *,
                 rngs: nnx.Rngs, dtype=None):
        widths = [in_features] + [hidden] * depth
        # Alternate logical axes so each kernel has one FSDP-sharded and one tensor-parallel side.
        self.hidden = nnx.List([
            Linear(a, b, axes=("embed", "mlp") if i % 2 == 0 else ("mlp", "embed"), rngs=rngs, dtype=dtype)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
        last_axes = ("embed", None) if depth % 2 == 0 else ("mlp", None)
        self.out = Linear(hidden, out_features, axes=last_axes, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = jax.nn.gelu(layer(x))
        return self.out(x)


class TeacherRegression:
    """x ~ N(0, 1), y = a fixed random two-layer tanh network of x; deterministic per index."""

    def __init__(self, num_examples: int, in_features: int, out_features: int, seed: int):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(size=(in_features, 32)).astype(np.float32) / np.sqrt(in_features)
        self.w2 = rng.normal(size=(32, out_features)).astype(np.float32) / np.sqrt(32)
        self.n, self.in_features, self.seed = num_examples, in_features, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        x = np.random.default_rng([self.seed, int(index)]).normal(size=self.in_features).astype(np.float32)
        return {"x": x, "y": np.tanh(x @ self.w1) @ self.w2}


def mse_loss(model: MLP, batch: dict, rng: jax.Array):
    del rng
    err = model(batch["x"]) - batch["y"]
    loss = jnp.mean(jnp.square(err))
    return loss, {"rmse": jnp.sqrt(loss)}
