"""InternVL through rdance.models.convert: sharded and single-file loading, export that transformers loads, strict key checks."""
import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rdance.models import internvl

transformers = pytest.importorskip("transformers")


def _rdance_logits(model, ids, pixels, mask):
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.logits(ids, pixels, mask))


def test_export_round_trip_through_transformers(hf_folder, batch, reference_logits, tmp_path):
    flavour, hf_model, path = hf_folder
    ids, pixels, mask = batch()
    want = reference_logits(hf_model, ids, pixels, mask)
    model = internvl.load(path)
    # Sharded export (several files + index): transformers and rdance both read it back.
    model.export(tmp_path / "export", max_shard_bytes=40_000)
    assert (tmp_path / "export" / "model.safetensors.index.json").exists()
    reloaded_hf = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    back = reference_logits(reloaded_hf, ids, pixels, mask)
    valid = mask.astype(bool)
    assert np.abs(back - want)[valid].max() == 0.0  # same weights, same torch code
    again = _rdance_logits(internvl.load(str(tmp_path / "export")), ids, pixels, mask)
    np.testing.assert_array_equal(again, _rdance_logits(model, ids, pixels, mask))


def test_loads_transformers_sharded_checkpoint(hf_folder_300m, batch, reference_logits, tmp_path):
    _, hf_model, _ = hf_folder_300m
    hf_model.save_pretrained(tmp_path, max_shard_size="30KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids, pixels, mask = batch()
    err = np.abs(_rdance_logits(internvl.load(str(tmp_path)), ids, pixels, mask)
                 - reference_logits(hf_model, ids, pixels, mask))[mask.astype(bool)].max()
    assert err < 1e-4


@pytest.fixture
def copy(hf_folder_300m, tmp_path):
    shutil.copytree(hf_folder_300m[2], tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_tensors(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_leftover_checkpoint_key_fails(copy):
    _edit_tensors(copy, lambda t: t.update({"vision_tower.encoder.layer.2.lambda_1": np.ones(32, np.float32)}))
    with pytest.raises(internvl.ConversionError, match=r"map to no parameter.*layer\.2\.lambda_1"):
        internvl.load(str(copy))


def test_missing_checkpoint_key_fails(copy):
    _edit_tensors(copy, lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(internvl.ConversionError, match=r"missing.*layers\.1\.mlp\.up_proj"):
        internvl.load(str(copy))


def test_shape_mismatch_fails_before_reading(copy):
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 48
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(internvl.ConversionError, match=r"shape mismatches.*gate_proj.*\(48, 32\)"):
        internvl.load(str(copy))


def test_missing_safetensors_fails(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(internvl.ConversionError, match="no safetensors weights.*model.safetensors"):
        internvl.load(str(copy))


def test_missing_index_shard_fails(copy):
    (copy / "model.safetensors").rename(copy / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in load_file(copy / "model-00001-of-00002.safetensors")}
    weight_map["language_model.model.norm.weight"] = "model-00002-of-00002.safetensors"
    (copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(internvl.ConversionError, match="model-00002-of-00002.safetensors is listed in the index"):
        internvl.load(str(copy))


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors_fails(copy, damage):
    file = copy / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
    with pytest.raises(internvl.ConversionError, match="model.safetensors"):
        internvl.load(str(copy))


def test_wrong_model_type_fails(copy):
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "llava"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(internvl.ConfigError, match="model_type is 'llava', expected 'internvl'"):
        internvl.load(str(copy))
