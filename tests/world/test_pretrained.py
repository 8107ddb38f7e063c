"""The world's shipped pretrained models (rdance/world/pretrained): every file matches the manifest,
the generator still draws what the judge checks, and shipping a folder is all or nothing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rdance.core import sharding
from rdance.world import pretrained
from rdance.world.captions import world_prompt_split
from rdance.world.evaluate import judge_scores
from rdance.world.generator import open_folder_sampler
from tests.conftest import REPO, make_generator_folder


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_every_shipped_model_matches_its_manifest(name):
    folder = pretrained.folder(name)
    entry = pretrained.manifest()[name]
    assert set(entry["files"]) == set(pretrained.files_of(folder))
    assert os.path.isfile(os.path.join(folder, pretrained.MARKERS[name]))
    assert entry["made_by"].startswith("python -m rdance.run.") and entry["wall"]


def test_the_shipped_generator_draws_the_held_out_prompts():
    """32 of the fine-tuning's held-out prompts x 1 sample: the shipped generator scored 0.55 over
    64 x 4 (the manifest's figure); a broken loader or a damaged file draws noise (judge ~0.0)."""
    _, scenes = world_prompt_split(1, 128, 32)
    mesh = sharding.make_mesh((1, -1, 1))
    gen, sampler, params = open_folder_sampler(pretrained.folder("generator"), mesh, sharding.DEFAULT_RULES,
                                               num_steps=20, chunk=32, seed=0)
    images = sampler(params, gen.frozen, gen.tokenize([s.prompt for s in scenes]), np.arange(len(scenes)))
    score = float(judge_scores(np.asarray(images), scenes).mean())
    assert score > 0.35, score


def test_a_damaged_or_missing_file_is_named(tmp_path):
    export = make_generator_folder(tmp_path / "made")
    root = tmp_path / "shipped"
    root.mkdir()
    folder = pretrained.ship("generator", export, "python -m rdance.run.pretrain_generator ...", "0:01", {},
                             root=str(root))
    assert pretrained.folder("generator", root=str(root)) == folder
    weights = next(f for f in pretrained.files_of(folder) if f.endswith(".safetensors"))
    with open(os.path.join(folder, weights), "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(pretrained.PretrainedError, match=f"{weights} differs from the one the manifest records"):
        pretrained.folder("generator", root=str(root))
    os.remove(os.path.join(folder, weights))
    with pytest.raises(pretrained.PretrainedError, match=f"{weights} is missing from the shipped 'generator'"):
        pretrained.folder("generator", root=str(root))
    with pytest.raises(pretrained.PretrainedError, match="'vlm_large' is not in .*manifest.json lists generator"):
        pretrained.folder("vlm_large", root=str(root))
    with pytest.raises(pretrained.PretrainedError, match="no pretrained world model 'vlm'"):
        pretrained.folder("vlm", root=str(root))


def test_shipping_replaces_a_model_whole_or_not_at_all(tmp_path):
    root = tmp_path / "shipped"
    root.mkdir()
    first = make_generator_folder(tmp_path / "a", seed=0)
    pretrained.ship("generator", first, "cmd a", "0:01", {"judge": 0.1}, root=str(root))
    # Not an export: refused before anything is copied; the shipped model and manifest stay.
    with pytest.raises(pretrained.PretrainedError, match="has no generator.json"):
        pretrained.ship("generator", str(tmp_path), "cmd b", "0:02", {}, root=str(root))
    assert sorted(os.listdir(root)) == ["generator", "manifest.json"]
    assert pretrained.manifest(str(root))["generator"]["made_by"] == "cmd a"
    second = make_generator_folder(tmp_path / "b", seed=1)
    folder = pretrained.ship("generator", second, "cmd b", "0:02", {"judge": 0.2}, root=str(root))
    assert sorted(os.listdir(root)) == ["generator", "manifest.json"]       # no staging folder left
    entry = pretrained.manifest(str(root))["generator"]
    assert entry["made_by"] == "cmd b" and entry["scores"] == {"judge": 0.2}
    for rel, digest in entry["files"].items():
        assert pretrained.sha256(os.path.join(second, rel)) == digest == pretrained.sha256(os.path.join(folder, rel))


def test_the_command_refuses_a_folder_that_is_not_an_export(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rdance.world.pretrained", "--name=vlm_small",
                             f"--export={tmp_path}", "--made_by=x", "--wall=0:01"], cwd=REPO, capture_output=True,
                            text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode != 0
    assert f"error: {tmp_path} has no reward_config.json: give the export folder of a finished train_reward run" \
        in result.stderr
    assert json.loads(open(os.path.join(pretrained.ROOT, "manifest.json")).read())   # untouched
