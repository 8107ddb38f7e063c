import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rdance.core import sharding as sh
from rdance.models.mlp import MLP


def test_mesh_shape_fills_the_rest(devices):
    assert sh.resolve_mesh_shape((2, -1, 1), 8) == (2, 4, 1)
    assert dict(sh.make_mesh((1, -1, 2)).shape) == {"data": 1, "fsdp": 4, "tensor": 2}


@pytest.mark.parametrize("shape, message", [
    ((3, -1, 1), "does not divide 8"),
    ((2, 2, 1), "uses 4 devices but 8"),
    ((-1, -1, 1), "at most one -1"),
    ((2, 4), "one entry per axis"),
])
def test_bad_mesh_shapes_are_explained(devices, shape, message):
    with pytest.raises(sh.ShardingError, match=message):
        sh.make_mesh(shape)


def test_logical_names_map_to_mesh_axes():
    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("norm", None))
    assert sh.logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert sh.logical_to_spec(("batch", "embed"), rules) == P(("data", "fsdp"), None)
    assert sh.logical_to_spec(("norm", None), rules) == P(None, None)


def test_a_logical_axis_without_a_rule_is_an_error():
    with pytest.raises(sh.ShardingError, match="no sharding rule for logical axis 'mlp'"):
        sh.logical_to_spec(("embed", "mlp"), (("embed", "fsdp"),))


def test_params_are_created_on_their_shards(devices):
    mesh = sh.make_mesh((1, 4, 2))
    model = sh.create_sharded(lambda: MLP(16, 64, 2, 4, rngs=nnx.Rngs(0)), mesh, sh.DEFAULT_RULES)
    kernel = model.hidden[0].kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (4, 32)
    # Same values as an unsharded init from the same seed.
    ref = MLP(16, 64, 2, 4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(kernel), np.asarray(ref.hidden[0].kernel[...]), rtol=1e-6)


def test_indivisible_parameter_is_named(devices):
    mesh = sh.make_mesh((1, 8, 1))
    with pytest.raises(sh.ShardingError, match=r"hidden/0/kernel.*cannot be split 8 ways"):
        sh.create_sharded(lambda: MLP(12, 64, 2, 4, rngs=nnx.Rngs(0)), mesh, sh.DEFAULT_RULES)


def test_a_param_without_axes_is_an_error(devices):
    class Bare(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((8, 8)))

    with pytest.raises(sh.ShardingError, match="parameter w has no logical axes"):
        sh.create_sharded(Bare, sh.make_mesh((1, -1, 1)), sh.DEFAULT_RULES)


def test_global_batch_is_split_over_data_axes(devices):
    mesh = sh.make_mesh((2, 4, 1))
    batch = sh.global_batch({"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}, mesh)
    assert batch["x"].shape == (16, 3)
    assert batch["x"].addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(48).reshape(16, 3))


def test_constrain_batch_splits_activations_only_under_activations_on(devices):
    mesh = sh.make_mesh((2, 2, 2))
    double = lambda x: sh.constrain_batch(x) * 2   # noqa: E731

    with sh.activations_on(mesh):
        pinned = jax.jit(double)(jnp.ones((8, 3)))
        odd = jax.jit(double)(jnp.ones((6, 3)))   # 6 rows do not split 4 ways: left to XLA
    assert pinned.sharding.is_equivalent_to(sh.batch_sharding(mesh, 2), 2)
    assert pinned.sharding.mesh.shape == mesh.shape
    assert len(odd.sharding.device_set) == 1
    # A fresh function: jit's cache does not know the context, so trace anew outside it.
    outside = jax.jit(lambda x: sh.constrain_batch(x) * 2)(jnp.ones((8, 3)))
    assert len(outside.sharding.device_set) == 1
    np.testing.assert_array_equal(pinned, outside)
