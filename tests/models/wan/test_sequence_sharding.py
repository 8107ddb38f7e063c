"""Sequence sharding of the Wan transformer on 4 of the 8 fake CPU devices: with the rule
('tokens', 'fsdp') its token stream is split along the token axis from the patch embedding to
the output projection, and the forward pass and the gradients (parameters and latents) equal the
unsharded ones. float32; sharded and unsharded differ only in summation order (the attention's
K/V all-gather and the parameter gradients' reductions), as in tests/models/test_sequence_sharding.py."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.models.wan.transformer import WanConfig, WanTransformer
from tests.models import assert_same_step

B, C, F, H, W, L = 2, 4, 2, 4, 4, 8   # 2 x 2 x 2 = 8 tokens a sample, 8 text tokens


def _token_split_constraints(jaxpr) -> int:
    """Sharding constraints of the top level (outside the block scan) that split [B, T, D]
    activations' token axis over 'fsdp'."""
    return sum(1 for eqn in jaxpr.eqns if eqn.primitive.name == "sharding_constraint"
               and len(eqn.params["sharding"].spec) == 3 and eqn.params["sharding"].spec[1] == "fsdp")


def test_wan_transformer_sequence_sharded_matches_unsharded(devices):
    cfg = WanConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=C,
                    out_channels=C, text_dim=24, freq_dim=32, ffn_dim=64, num_layers=1, rope_max_seq_len=32,
                    attention="xla")
    graphdef, params = nnx.split(WanTransformer(cfg, rngs=nnx.Rngs(0)))
    r = np.random.default_rng(0)
    latents = jnp.asarray(r.normal(size=(B, C, F, H, W)), jnp.float32)
    text = jnp.asarray(r.normal(size=(B, L, 24)), jnp.float32)
    target = jnp.asarray(r.normal(size=(B, C, F, H, W)), jnp.float32)
    timestep = jnp.asarray([300.0, 800.0])

    def forward(params, latents):
        return nnx.merge(graphdef, params)(latents, timestep, text)

    def loss(params, latents):
        out = forward(params, latents)
        return jnp.mean((out - target) ** 2), out

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

    mesh = sharding.make_mesh((2, 2, 1), devices[:4])
    rules = sharding.with_rule(sharding.DEFAULT_RULES, "tokens", "fsdp")
    placed = jax.tree.map(jax.device_put, params, sharding.state_shardings(params, mesh, rules))
    placed_latents = jax.device_put(latents, NamedSharding(mesh, P("data")))
    ref = jax.jit(step)(params, latents)
    with sharding.activations_on(mesh, rules):
        # Fresh functions: jit's and make_jaxpr's caches do not know the activation context.
        top = jax.make_jaxpr(lambda p, x: forward(p, x))(placed, placed_latents).jaxpr
        full = str(jax.make_jaxpr(lambda p, x: step(p, x))(placed, placed_latents))
        got = jax.jit(lambda p, x: step(p, x))(placed, placed_latents)

    assert _token_split_constraints(top) == 2   # after the patch embedding, after the last block
    assert "all_gather" in full                 # attention's K/V gathered along the split tokens
    assert_same_step(got, ref, out_atol=1e-5)
