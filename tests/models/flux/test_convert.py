"""FLUX through rdance.models.convert: sharded checkpoints, export and round trip, and the hard failures."""
import json
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from rdance.models.convert import ConversionError
from rdance.models.flux import (config, export_transformer, export_vae, load_transformer,
                                load_vae)


def inputs(rng):
    ids = np.stack(np.meshgrid(np.zeros(1), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    return dict(hidden_states=rng.standard_normal((1, 16, 16)).astype(np.float32),
                encoder_hidden_states=rng.standard_normal((1, 3, 32)).astype(np.float32),
                pooled_projections=rng.standard_normal((1, 32)).astype(np.float32),
                timestep=np.array([0.5], np.float32), img_ids=ids.astype(np.float32),
                txt_ids=np.zeros((3, 3), np.float32), guidance=np.array([2.0], np.float32))


def params(model):
    return {"/".join(map(str, p)): np.asarray(v) for p, v in jax.tree.leaves_with_path(nnx.state(model))}


def test_export_round_trip_through_diffusers(flux_pipe, tmp_path, rng):
    """export -> diffusers from_pretrained -> same output as rdance (and the original)."""
    from diffusers import FluxTransformer2DModel
    model = load_transformer(flux_pipe[0] / "transformer")
    out = export_transformer(model, tmp_path / "exported")
    reloaded = FluxTransformer2DModel.from_pretrained(out).eval()
    args = inputs(rng)
    with torch.no_grad():
        ref = reloaded(**{k: torch.tensor(v) for k, v in args.items()}).sample.numpy()
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(model(**args))
    assert np.abs(ours - ref).max() < 1e-4
    original = load_file(flux_pipe[0] / "transformer" / "diffusion_pytorch_model.safetensors")
    exported = load_file(out / "diffusion_pytorch_model.safetensors")
    assert original.keys() == exported.keys()
    assert all(np.array_equal(original[k], exported[k]) for k in original)


def test_sharded_index_round_trip(flux_pipe, tmp_path):
    model = load_vae(flux_pipe[0] / "vae")
    out = export_vae(model, tmp_path / "vae", max_shard_bytes=20_000)
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = load_vae(out)
    a, b = params(model), params(reloaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def vae_copy(flux_pipe, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(flux_pipe[0] / "vae", folder)
    return folder, folder / "diffusion_pytorch_model.safetensors"


def test_leftover_checkpoint_key_fails(vae_copy):
    folder, file = vae_copy
    tensors = load_file(file)
    tensors["decoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, file)
    with pytest.raises(ConversionError, match=r"1 checkpoint keys map to no parameter \['decoder.extra.weight'\]"):
        load_vae(folder)


def test_missing_checkpoint_key_fails(vae_copy):
    folder, file = vae_copy
    tensors = load_file(file)
    del tensors["encoder.conv_in.bias"]
    save_file(tensors, file)
    with pytest.raises(ConversionError, match=r"1 keys the model needs are missing .*encoder.conv_in.bias"):
        load_vae(folder)


def test_shape_mismatch_fails(vae_copy):
    folder, file = vae_copy
    tensors = load_file(file)
    tensors["encoder.conv_in.bias"] = np.zeros(5, np.float32)
    save_file(tensors, file)
    with pytest.raises(ConversionError, match="encoder.conv_in.bias: checkpoint shape"):
        load_vae(folder)


def test_checkpoint_of_another_type(flux_pipe):
    with pytest.raises(config.CheckpointTypeError, match="holds a AutoencoderKL checkpoint, not FluxTransformer2DModel"):
        load_transformer(flux_pipe[0] / "vae")
    with pytest.raises(config.CheckpointTypeError, match="not AutoencoderKL"):
        load_vae(flux_pipe[0] / "text_encoder")


def test_folder_without_weights(flux_pipe, tmp_path):
    shutil.copy(flux_pipe[0] / "vae" / "config.json", tmp_path / "config.json")
    with pytest.raises(ConversionError, match="no safetensors weights"):
        load_vae(tmp_path)
