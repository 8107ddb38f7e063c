"""rdance.models.attention: 'chunked' gives xla's values and gradients (no mask, key padding,
causal, grouped-query, additive bias, all at once; chunks that do not divide the lengths); 'auto'
is xla on CPU; an unknown name lists the valid ones; kernels that cannot do a call say so."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.core.config_checks import ConfigValueError
from rdance.models import attention

B, T, S, H, D = 2, 19, 23, 4, 8


def _inputs(kv_heads=H, t=T, s=S, seed=0):
    r = np.random.default_rng(seed)
    q = jnp.asarray(r.normal(size=(B, t, H, D)), jnp.float32)
    k = jnp.asarray(r.normal(size=(B, s, kv_heads, D)), jnp.float32)
    v = jnp.asarray(r.normal(size=(B, s, kv_heads, D)), jnp.float32)
    return q, k, v


def _padding(s=S, seed=1):
    valid = np.random.default_rng(seed).random((B, s)) > 0.3
    valid[:, 0] = True
    return jnp.asarray(valid)[:, None, None, :]


CASES = {
    "plain": (H, {}),
    "padding": (H, dict(mask=_padding())),
    "causal": (H, dict(causal=True)),
    "gqa": (2, dict(causal=True, mask=_padding())),
    "bias": (H, dict(bias=jnp.asarray(np.random.default_rng(2).normal(size=(1, H, T, S)), jnp.float32))),
    "dense_mask_and_bias": (1, dict(
        mask=jnp.asarray(np.random.default_rng(3).random((B, 1, T, S)) > 0.2),
        bias=jnp.asarray(np.random.default_rng(4).normal(size=(B, H, T, S)), jnp.float32))),
}


def _loss(impl, kw, **chunks):
    # A weighted sum, so every output element has its own gradient.
    w = jnp.asarray(np.random.default_rng(5).normal(size=(B, T, H, D)), jnp.float32)
    return lambda q, k, v: jnp.sum(w * attention.attend(q, k, v, impl=impl, **kw, **chunks))


# Every case with chunks that divide neither length; the other chunkings (one chunk bigger than
# both lengths, one query a chunk) on the two cases that combine the most features.
CHUNKINGS = [(case, 8, 5) for case in sorted(CASES)] + [
    (case, q, k) for case in ("gqa", "dense_mask_and_bias") for q, k in [(64, 64), (1, 23)]]


@pytest.mark.parametrize("case, q_chunk, k_chunk", CHUNKINGS)
def test_chunked_matches_xla_values_and_gradients(case, q_chunk, k_chunk):
    kv_heads, kw = CASES[case]
    q, k, v = _inputs(kv_heads)
    ref = attention.attend(q, k, v, impl="xla", **kw)
    got = jax.jit(lambda q, k, v: attention.attend(q, k, v, impl="chunked", q_chunk=q_chunk,
                                                   k_chunk=k_chunk, **kw))(q, k, v)
    assert got.shape == ref.shape == (B, T, H, D)
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=1e-5)
    g_ref = jax.grad(_loss("xla", kw), argnums=(0, 1, 2))(q, k, v)
    g_got = jax.jit(jax.grad(_loss("chunked", kw, q_chunk=q_chunk, k_chunk=k_chunk), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", g_got, g_ref):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=f"d/d{name}")


def test_chunked_bias_gradient_and_fully_masked_rows():
    """The bias is a parameter in T5 (relative position table): its gradient agrees too; a query
    whose keys are all masked averages every key, as xla's softmax over equal logits does."""
    q, k, v = _inputs()
    bias = jnp.asarray(np.random.default_rng(6).normal(size=(1, H, T, S)), jnp.float32)
    mask = _padding().at[0, ..., :].set(False)   # batch row 0: no key visible
    f = lambda impl: lambda b: jnp.sum(attention.attend(q, k, v, bias=b, mask=mask, impl=impl,  # noqa: E731
                                                        q_chunk=4, k_chunk=6) ** 2)
    np.testing.assert_allclose(jax.grad(f("chunked"))(bias), jax.grad(f("xla"))(bias), atol=2e-5, rtol=1e-4)
    out = attention.attend(q, k, v, mask=mask, impl="chunked", q_chunk=4, k_chunk=6)
    np.testing.assert_allclose(out[0], jnp.broadcast_to(v[0].mean(0), out[0].shape), atol=1e-5)


def test_chunked_cross_attention_and_bfloat16():
    """Queries and keys of different lengths (a KV cache), and bfloat16 inputs (float32 inside)."""
    q, k, v = (x.astype(jnp.bfloat16) for x in _inputs(t=3, s=40))
    mask = _padding(40)
    ref = attention.attend(q, k, v, mask=mask, impl="xla")
    got = attention.attend(q, k, v, mask=mask, impl="chunked", q_chunk=2, k_chunk=16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), atol=2e-2)


def test_chunk_memory_estimate():
    assert attention.score_bytes(1, 8, 4096, 4096, "xla") == 4 * 8 * 4096 * 4096
    assert attention.score_bytes(1, 8, 4096, 4096, "chunked", 512, 512) == 4 * 8 * 512 * 512


def test_auto_is_xla_on_cpu_and_each_platform_has_its_kernel():
    assert jax.default_backend() == "cpu"
    assert attention.choose("auto") == "xla"
    assert [attention.choose("auto", p) for p in ("cpu", "gpu", "tpu")] == ["xla", "cudnn", "splash"]
    with attention.target_platform("tpu"):
        assert attention.choose("auto") == "splash"
    assert attention.choose("chunked", "tpu") == "chunked"
    q, k, v = _inputs()
    np.testing.assert_array_equal(attention.attend(q, k, v), attention.attend(q, k, v, impl="xla"))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigValueError) as error:
        attention.check("flash2")
    assert str(error.value) == "unknown attention 'flash2'; choose one of auto, xla, chunked, cudnn, splash"
    q, k, v = _inputs()
    with pytest.raises(ConfigValueError, match="choose one of auto, xla, chunked, cudnn, splash"):
        attention.attend(q, k, v, impl="flash2")


def test_kernels_say_what_they_cannot_do():
    """Explicit cudnn/splash fail naming the feature and the fallbacks; 'auto' falls back to xla."""
    q, k, v = _inputs()
    with pytest.raises(attention.Unsupported, match=r"'cudnn': needs float16/bfloat16 inputs.*'xla' or 'chunked'"):
        attention.attend(q, k, v, impl="cudnn")
    bias = jnp.zeros((1, H, T, S))
    with pytest.raises(attention.Unsupported, match="'cudnn': is not given an additive bias"):
        attention.attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)), bias=bias, impl="cudnn")
    with pytest.raises(attention.Unsupported, match="'splash': has no additive bias"):
        attention.attend(q, k, v, bias=bias, impl="splash")
    with pytest.raises(attention.Unsupported, match=r"'splash': takes masks that are causal and/or key padding"):
        attention.attend(q, k, v, mask=jnp.ones((B, 1, T, S), bool), impl="splash")
    with attention.target_platform("tpu"):   # auto picks splash, which has no bias: xla runs instead
        np.testing.assert_array_equal(attention.attend(q, k, v, bias=bias),
                                      attention.attend(q, k, v, bias=bias, impl="xla"))


def test_model_configs_refuse_an_unknown_name():
    from flax import nnx

    from rdance.models.flux.transformer import FluxConfig, FluxTransformer
    from rdance.models.flux.vae import VAEConfig
    with pytest.raises(ConfigValueError, match="unknown attention 'fast'"):
        VAEConfig(attention="fast")
    with pytest.raises(ConfigValueError, match="unknown attention 'fast'"):
        nnx.eval_shape(lambda: FluxTransformer(FluxConfig(num_layers=1, num_single_layers=1, attention_head_dim=8,
                                                          num_attention_heads=2, axes_dims_rope=(2, 2, 4),
                                                          attention="fast"), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("kv_heads, kw", [(H, {}), (2, dict(causal=True, mask=_padding(T)))])
def test_splash_kernel_matches_xla_in_interpret_mode(monkeypatch, kv_heads, kw):
    """jax's Pallas splash kernel, interpreted on CPU: rdance's padding (lengths to the block,
    head_dim to 128 lanes), key-padding segment ids, scale and grouped heads give xla's values and
    gradients."""
    monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)
    q, k, v = _inputs(kv_heads, s=T)
    f = lambda impl: lambda q, k, v: jnp.sum(attention.attend(q, k, v, impl=impl, **kw) ** 2)  # noqa: E731
    np.testing.assert_allclose(attention.attend(q, k, v, impl="splash", **kw),
                               attention.attend(q, k, v, impl="xla", **kw), atol=2e-6, rtol=1e-5)
    for a, b in zip(jax.grad(f("splash"), argnums=(0, 1, 2))(q, k, v), jax.grad(f("xla"), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def _tpu_devices():
    pytest.importorskip("libtpu")
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
    except Exception as e:  # noqa: BLE001  (libtpu present but unusable here)
        pytest.skip(f"no TPU topology from libtpu: {e}")


@pytest.mark.parametrize("tokens", [None, "fsdp"])
def test_splash_step_compiles_for_a_tpu_topology(tokens):
    """With libtpu (no TPU): a FLUX transformer's forward and gradient, attention 'auto' chosen
    for TPU, compile for v5e:2x2 with batch and heads sharded (and, tokens='fsdp', the token axis:
    sequence sharding, K/V all-gathered); the kernel runs in a shard_map over the activation mesh
    (XLA cannot partition a Pallas call)."""
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from rdance.core import sharding
    from rdance.models.flux.transformer import FluxConfig, FluxTransformer
    mesh = sharding.make_mesh((1, 2, 2), _tpu_devices())
    cfg = FluxConfig(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=4,
                     in_channels=8, joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6),
                     dtype="bfloat16")
    graphdef, state = sharding.sharded_shapes(lambda: FluxTransformer(cfg, rngs=nnx.Rngs(0)), mesh,
                                              sharding.DEFAULT_RULES)
    batch = NamedSharding(mesh, P(sharding.BATCH_AXES))
    shape = lambda *s, dtype=jnp.float32: jax.ShapeDtypeStruct(s, dtype, sharding=batch)  # noqa: E731
    img, txt = shape(2, 64, 8), shape(2, 8, 32)

    def loss(state, img, txt):
        model = nnx.merge(graphdef, state)
        out = model(img, txt, jnp.zeros((2, 16)), jnp.full((2,), 0.5), jnp.zeros((64, 3)), jnp.zeros((8, 3)))
        return out.astype(jnp.float32).sum()

    rules = tuple((k, tokens if k == "tokens" else v) for k, v in sharding.DEFAULT_RULES)
    with attention.target_platform("tpu"), sharding.activations_on(mesh, rules):
        lowered = jax.jit(jax.grad(loss)).lower(state, img, txt)
    assert "tpu_custom_call" in lowered.as_text()   # the splash kernel, not xla's softmax
    assert ("all_gather" in lowered.as_text()) == (tokens is not None)
    assert lowered.compile().memory_analysis() is not None
