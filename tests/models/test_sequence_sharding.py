"""Sequence (context) sharding on 8 fake CPU devices: with the rule ('tokens', 'fsdp') every
attention call splits its queries along the token axis and all-gathers K/V (a shard_map), and the
values and gradients equal the unsharded call's, for `attend` alone (xla and chunked; padding,
causal, grouped-query, bias, cross-attention) and for a tiny FLUX transformer's forward and
backward. The chunked path under a batch/heads-sharded mesh (default rules) matches too. The
chunk sizes are config keys, checked.

Tolerances: float32 throughout; sharded and unsharded differ only in summation order (the
all-gather and reduce-scatter of dK/dV), so values agree to 2e-6 absolute (attention outputs of
order 1) and gradients to 2e-5 absolute / 1e-4 relative, as the chunked-vs-xla parity tests."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.core.config_checks import ConfigValueError, check_bounds
from rdance.models import attention
from tests.models import assert_same_step

B, T, S, H, D = 2, 16, 24, 4, 8


def _rules(tokens):
    rules = sharding.with_rule(sharding.DEFAULT_RULES, "tokens", tokens)
    assert dict(rules)["tokens"] == tokens and len(rules) == len(sharding.DEFAULT_RULES)
    return rules


def _inputs(kv_heads=H, s=S, seed=0):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.normal(size=shape), jnp.float32)
                 for shape in ((B, T, H, D), (B, s, kv_heads, D), (B, s, kv_heads, D)))


def _padding(s=S, seed=1):
    valid = np.random.default_rng(seed).random((B, s)) > 0.3
    valid[:, 0] = True
    return jnp.asarray(valid)[:, None, None, :]


CASES = {
    "plain": (H, S, {}),
    "self_causal_gqa_padding": (2, T, dict(causal=True, mask=_padding(T))),
    "bias_and_dense_mask": (H, S, dict(
        bias=jnp.asarray(np.random.default_rng(2).normal(size=(B, H, T, S)), jnp.float32),
        mask=jnp.asarray(np.random.default_rng(3).random((B, 1, T, S)) > 0.2))),
}


def _sharded_and_plain(fn, mesh, rules, args, plain_args):
    """(fn(*args) jitted under activations_on(mesh, rules), its jaxpr text, fn(*plain_args) jitted
    on one device)."""
    with sharding.activations_on(mesh, rules):
        jaxpr = str(jax.make_jaxpr(fn)(*args))
        got = jax.jit(fn)(*args)
    return got, jaxpr, jax.jit(fn)(*plain_args)


@pytest.mark.parametrize("mesh_shape, tokens, impl, case", [
    ((2, 2, 2), "fsdp", "xla", "plain"),
    ((2, 2, 2), "fsdp", "xla", "bias_and_dense_mask"),
    ((2, 2, 2), "fsdp", "chunked:3:5", "self_causal_gqa_padding"),
    ((1, 4, 2), ("fsdp", "tensor"), "xla", "self_causal_gqa_padding"),
    ((1, 4, 2), ("fsdp", "tensor"), "chunked:3:5", "bias_and_dense_mask"),
    ((2, 2, 2), None, "chunked:3:5", "self_causal_gqa_padding"),
    ((2, 2, 2), None, "chunked:3:5", "bias_and_dense_mask"),
])
def test_attend_sequence_sharded_matches_unsharded(devices, mesh_shape, tokens, impl, case):
    """Tokens over 'fsdp' (batch over 'data', heads over 'tensor'), over two axes at once (heads
    then unsplit), and (None) the default rules: the chunked path with batch and heads split by
    the inputs' placement; each against one device."""
    kv_heads, s, kw = CASES[case]
    q, k, v = _inputs(kv_heads, s)
    mesh = sharding.make_mesh(mesh_shape)
    bias = kw.get("bias")
    rest = {key: val for key, val in kw.items() if key != "bias"}
    w = jnp.asarray(np.random.default_rng(5).normal(size=(B, T, H, D)), jnp.float32)

    def loss(q, k, v, bias):
        return jnp.sum(w * attention.attend(q, k, v, bias=bias, impl=impl, **rest))

    def out_and_grads(q, k, v, bias):
        return attention.attend(q, k, v, bias=bias, impl=impl, **rest), \
            jax.grad(loss, argnums=(0, 1, 2, 3) if bias is not None else (0, 1, 2))(q, k, v, bias)

    placed = [jax.device_put(x, NamedSharding(mesh, P("data", None, "tensor" if x.shape[2] % 2 == 0 else None)))
              for x in (q, k, v)]
    (got, g_got), jaxpr, (ref, g_ref) = _sharded_and_plain(out_and_grads, mesh, _rules(tokens), (*placed, bias),
                                                           (q, k, v, bias))
    assert ("all_gather" in jaxpr) == (tokens is not None)   # the K/V all-gather of sequence sharding
    np.testing.assert_allclose(got, ref, atol=2e-6)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), g_got, g_ref):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=name)
    # And against the plain (unsharded) xla path.
    np.testing.assert_allclose(got, attention.attend(q, k, v, bias=bias, impl="xla", **rest), atol=2e-6)


def test_lengths_that_do_not_divide_run_unsharded(devices):
    mesh = sharding.make_mesh((1, 8, 1))
    q, k, v = _inputs(s=20)   # 16 queries split 8 ways, 20 keys do not
    f = lambda q, k, v: attention.attend(q, k, v, impl="xla")  # noqa: E731
    got, jaxpr, ref = _sharded_and_plain(f, mesh, _rules("fsdp"), (q, k, v), (q, k, v))
    assert "all_gather" not in jaxpr
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_kernels_refuse_causal_sequence_shards(devices):
    """splash and cudnn start their causal mask at query 0, wrong for a later shard's queries:
    asked for by name they refuse; 'auto' on TPU runs such a call with xla, still sequence-sharded."""
    q, k, v = _inputs(s=T)
    mesh = sharding.make_mesh((1, 8, 1))
    with sharding.activations_on(mesh, _rules("fsdp")):
        for impl in ("splash", "cudnn"):
            with pytest.raises(attention.Unsupported, match="causal mask offset by a sequence shard"):
                attention.attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), causal=True, impl=impl)
        with attention.target_platform("tpu"):
            f = lambda q, k, v: attention.attend(q, k, v, causal=True)  # noqa: E731
            jaxpr = str(jax.make_jaxpr(f)(q, k, v))
            got = jax.jit(f)(q, k, v)
    assert "all_gather" in jaxpr and "tpu_custom_call" not in jaxpr
    np.testing.assert_allclose(got, attention.attend(q, k, v, causal=True, impl="xla"), atol=2e-6)


def test_token_rule_must_name_a_mesh_axis(devices):
    with pytest.raises(sharding.ShardingError, match=r"rule \('tokens', 'seq'\) names mesh axes \['seq'\]"):
        with sharding.activations_on(sharding.make_mesh((1, 8, 1)), _rules("seq")):
            pass
    assert sharding.token_axes(sharding.DEFAULT_RULES) == ()
    assert sharding.token_axes((("batch", "data"),)) == ()   # rules without 'tokens': unsharded
    assert sharding.token_axes(sharding.with_rule((("batch", "data"),), "tokens", ("fsdp", "tensor"))) == \
        ("fsdp", "tensor")


def test_constrain_batch_splits_tokens_under_sequence_sharding(devices):
    mesh = sharding.make_mesh((2, 4, 1))
    with sharding.activations_on(mesh, _rules("fsdp")):
        x = jax.jit(lambda x: sharding.constrain_batch(x) * 2)(jnp.ones((4, 8, 3)))
        flat = jax.jit(lambda x: sharding.constrain_batch(x) * 2)(jnp.ones((4, 3)))
    assert x.sharding.is_equivalent_to(NamedSharding(mesh, P(("data",), "fsdp", None)), 3)
    assert flat.sharding.is_equivalent_to(NamedSharding(mesh, P(("data",), None)), 2)


def _tiny_flux():
    from rdance.models.flux.transformer import FluxConfig, FluxTransformer
    cfg = FluxConfig(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
                     in_channels=8, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
                     guidance_embeds=True)
    return lambda: FluxTransformer(cfg, rngs=nnx.Rngs(0))


def test_flux_transformer_sequence_sharded_matches_unsharded(devices):
    """Forward and backward (parameters and latents) of a tiny FLUX.1-dev-style transformer: 16
    image + 8 text tokens split 2 ways along 'fsdp' (batch 2 over 'data'; 4 of the devices, which
    compiles faster than 8), parameters sharded by the same rules, against one device."""
    make = _tiny_flux()
    mesh = sharding.make_mesh((2, 2, 1), devices[:4])
    rules = _rules("fsdp")
    r = np.random.default_rng(0)
    img = jnp.asarray(r.normal(size=(B, 16, 8)), jnp.float32)
    txt = jnp.asarray(r.normal(size=(B, 8, 16)), jnp.float32)
    pooled = jnp.asarray(r.normal(size=(B, 8)), jnp.float32)
    img_ids = jnp.asarray(np.stack(np.meshgrid(np.zeros(1), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(16, 3),
                          jnp.float32)
    txt_ids = jnp.zeros((8, 3), jnp.float32)
    target = jnp.asarray(r.normal(size=(B, 16, 8)), jnp.float32)
    graphdef, params = nnx.split(make())

    def loss(params, img):
        out = nnx.merge(graphdef, params)(img, txt, pooled, jnp.asarray([0.3, 0.7]), img_ids, txt_ids,
                                          guidance=jnp.full((B,), 0.35))
        return jnp.mean((out - target) ** 2), out

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    shardings = sharding.state_shardings(params, mesh, rules)
    placed = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)
    got, jaxpr, ref = _sharded_and_plain(
        step, mesh, rules, (placed, jax.device_put(img, NamedSharding(mesh, P("data")))), (params, img))
    assert jaxpr.count("all_gather") >= 2   # the double block's and the single block's attention
    assert_same_step(got, ref, out_atol=2e-5)


def test_chunk_sizes_are_config_keys():
    assert attention.spec("chunked", 256, 1024) == "chunked:256:1024"
    assert attention.spec("chunked", None, 64) == f"chunked:{attention.Q_CHUNK}:64"
    assert attention.spec("auto", 256, 256) == "auto"   # other implementations have no chunks
    assert attention.from_config(ml_collections.ConfigDict(
        dict(attention="chunked", attention_q_chunk=128, attention_k_chunk=32))) == "chunked:128:32"
    assert attention.parse("chunked:128:32") == ("chunked", 128, 32)
    assert attention.score_bytes(1, 8, 4096, 4096, "chunked:128:32") == 4 * 8 * 128 * 32
    with pytest.raises(ConfigValueError, match="chunk sizes go with 'chunked' only"):
        attention.check("xla:8:8")
    with pytest.raises(ConfigValueError, match="attention_q_chunk=0 is out of range"):
        attention.spec("chunked", 0, 8)
    c = ml_collections.ConfigDict(dict(generator=dict(attention="chunked", attention_q_chunk=0, attention_k_chunk=8)))
    with pytest.raises(ConfigValueError, match=r"generator.attention_q_chunk=0 is out of range.*>= 1"):
        check_bounds(c)
    # The sizes reach the computation: chunks named in the implementation equal explicit ones
    # (the chunk count shows in the program: 16 queries in chunks of 3 are 6 chunks, of 8 are 2).
    q, k, v = _inputs()
    named = jax.jit(lambda q, k, v: attention.attend(q, k, v, impl="chunked:3:5"))
    np.testing.assert_array_equal(named(q, k, v), jax.jit(lambda q, k, v: attention.attend(
        q, k, v, impl="chunked", q_chunk=3, k_chunk=5))(q, k, v))
    assert "bf16[6,2,3,4,1,8]" not in str(jax.make_jaxpr(named)(q, k, v))
    assert "f32[6,2,3,4,1,8]" in str(jax.make_jaxpr(named)(q, k, v))
