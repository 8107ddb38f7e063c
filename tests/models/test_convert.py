"""rdance.models.convert, the one conversion engine: round trip of plain and stacked leaves, and
every mismatch as one ConversionError naming the file and the key."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from rdance.models import convert
from rdance.models.convert import ConversionError
from rdance.models.flux.stack import make_stack
from rdance.models.layers import Linear


class Tiny(nnx.Module):
    def __init__(self, rngs, dtype=jnp.float32):
        self.proj = Linear(3, 4, axes=(None, None), rngs=rngs, param_dtype=dtype)
        self.blocks = make_stack(lambda r: Linear(4, 4, axes=(None, None), rngs=r, param_dtype=dtype), 2, rngs)


def torch_key(path):
    key = ".".join(path).replace("kernel", "weight")
    return key.replace("blocks.", "blocks.{i}.") if path[0] == "blocks" else key


def abstract(dtype=jnp.float32):
    return nnx.split(nnx.eval_shape(lambda: Tiny(nnx.Rngs(0), dtype)))


def values(state):
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(state)}


@pytest.fixture
def folder(tmp_path):
    model = Tiny(nnx.Rngs(1))
    convert.export(nnx.state(model, nnx.Param), tmp_path / "ckpt", torch_key, {"kind": "tiny"})
    return tmp_path / "ckpt", model


def test_round_trip_in_torch_layout(folder):
    path, model = folder
    tensors = load_file(path / "model.safetensors")
    assert sorted(tensors) == ["blocks.0.bias", "blocks.0.weight", "blocks.1.bias", "blocks.1.weight",
                               "proj.bias", "proj.weight"]
    np.testing.assert_array_equal(tensors["proj.weight"], np.asarray(model.proj.kernel[...]).T)
    np.testing.assert_array_equal(tensors["blocks.1.weight"], np.asarray(model.blocks.kernel[...])[1].T)
    graphdef, state = abstract()
    loaded = convert.load_state(path, state, torch_key)
    want, got = values(nnx.state(model)), values(loaded)
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)


def test_bfloat16_sharded_round_trip(tmp_path):
    model = Tiny(nnx.Rngs(2), jnp.bfloat16)
    convert.export(nnx.state(model, nnx.Param), tmp_path, torch_key, {}, max_shard_bytes=40)
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = values(convert.load_state(tmp_path, abstract(jnp.bfloat16)[1], torch_key))
    assert loaded["blocks/kernel"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded["blocks/kernel"], np.asarray(model.blocks.kernel[...]))


def _damaged(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ConversionError) as error:
        convert.load_state(path, abstract()[1], torch_key)
    return error.value


def test_missing_key_names_the_folder_and_key(folder):
    path, _ = folder
    e = _damaged(path, lambda t: t.pop("blocks.1.bias"))
    assert (e.file, e.key) == (str(path), "blocks.1.bias")
    assert str(e).startswith(f"{path}: blocks.1.bias: 1 keys the model needs are missing")


def test_unexpected_key_names_the_file_and_key(folder):
    path, _ = folder
    e = _damaged(path, lambda t: t.update({"blocks.2.bias": np.zeros(4, np.float32)}))
    assert (e.file, e.key) == (str(path / "model.safetensors"), "blocks.2.bias")
    assert "1 checkpoint keys map to no parameter ['blocks.2.bias']" in str(e)


def test_wrong_shape_names_the_file_and_key(folder):
    path, _ = folder
    e = _damaged(path, lambda t: t.update({"proj.weight": np.zeros((4, 5), np.float32)}))
    assert (e.file, e.key) == (str(path / "model.safetensors"), "proj.weight")
    assert "proj.weight: checkpoint shape (4, 5), config.json expects (4, 3)" in str(e)
    assert "use the config.json the checkpoint was saved with" in str(e)


def test_tied_duplicate_must_equal_its_original(folder):
    path, _ = folder
    tensors = load_file(path / "model.safetensors")
    tensors["head.weight"] = tensors["proj.weight"]
    save_file(tensors, path / "model.safetensors")
    convert.load_state(path, abstract()[1], torch_key, tied={"head.weight": "proj.weight"})  # equal: dropped
    tensors["head.weight"] = tensors["proj.weight"] + 1
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ConversionError, match="head.weight: differs from proj.weight"):
        convert.load_state(path, abstract()[1], torch_key, tied={"head.weight": "proj.weight"})
