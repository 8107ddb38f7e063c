"""train_reward end to end on a tiny config: trains, evaluates, exports a loadable RM, and a
kill -9 + rerun ends with the same losses and eval accuracy as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from rdance.reward.api import RewardModel
from tests.conftest import REPO, environment, metrics_by_step

TINY = ["--config=experiments/rm_smoke.py", "--config.model.patch_size=8", "--config.model.vision_hidden=32",
        "--config.model.vision_layers=1", "--config.model.vision_heads=2", "--config.model.text_hidden=32",
        "--config.model.text_layers=1", "--config.model.text_heads=2", "--config.model.text_kv_heads=1",
        "--config.data.global_batch_size=8", "--config.data.eval_pairs=16", "--config.data.eval_batch_size=16",
        "--config.data.eval_sets=in_domain=world", "--config.train.steps=12", "--config.train.log_every=1",
        "--config.train.eval_every=6", "--config.train.checkpoint_every=3", "--config.optim.warmup_steps=2"]


def command(workdir, *extra):
    return [sys.executable, "-m", "rdance.run.train_reward", f"--workdir={workdir}", *TINY, *extra]


def env():
    return environment(devices=2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("rm"))
    result = subprocess.run(command(workdir), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_trains_evaluates_and_exports(uninterrupted):
    r = metrics_by_step(uninterrupted)
    assert r[12]["loss"] < r[1]["loss"]
    assert 0.0 <= r[12]["eval/in_domain/accuracy"] <= 1.0 and "eval/in_domain/ece" in r[6]
    rm = RewardModel.from_pretrained(os.path.join(uninterrupted, "export"))
    assert rm.paradigm == "pairwise" and rm.spec.max_prompt_tokens == 120


def test_kill_9_and_resume_matches(tmp_path, uninterrupted):
    workdir = str(tmp_path)
    proc = subprocess.Popen(command(workdir), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(workdir, "checkpoints", "6")):
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before step 6"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = subprocess.run(command(workdir), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "resuming from" in result.stderr, result.stderr[-3000:]
    got, want = metrics_by_step(workdir), metrics_by_step(uninterrupted)
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s]["loss"] for s in sorted(got)], [want[s]["loss"] for s in sorted(want)], rtol=1e-5)
    assert got[12]["eval/in_domain/accuracy"] == want[12]["eval/in_domain/accuracy"]
    np.testing.assert_allclose(got[12]["eval/in_domain/brier"], want[12]["eval/in_domain/brier"], rtol=1e-5)


def test_mistake_weights_shape_the_training_pairs_only():
    from experiments import rm_smoke
    import rdance.world  # noqa: F401  (registers 'world')
    from rdance.data.registry import open_source
    data = rm_smoke.get_config().data
    source = lambda train: open_source("world", data, seed=0, size=4, noise=0.0, train=train)
    data.mistake_weights.shape = 1.0
    assert source(True).mistake_weights is None   # all alike: the uniform draw, as before the knob
    data.mistake_weights.shape = 4.0
    assert source(True).mistake_weights == dict(colour=1.0, shape=4.0, count=1.0, missing=1.0, relation=1.0)
    assert source(False).mistake_weights is None  # held-out pairs keep the world's own mix


def test_jsonl_training_names_its_own_settings_for_a_path_outside_the_folder(tmp_path):
    """The records' errors name the config keys that loosen them, not the converter's flags."""
    from rdance.data import records
    from rdance.data.registry import open_source
    from experiments import rm_smoke
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (folder / "train.jsonl").write_text('{"prompt": "a", "images": ["../outside.png"], "label": 1}\n')
    config = rm_smoke.get_config()
    saved = dict(records.OPTION_NAMES)
    try:
        records.name_options(allow_outside_paths="--config.data.allow_outside_paths=true")
        source = open_source(str(folder / "train.jsonl"), config.data, seed=0, size=8, noise=0.0)
        with pytest.raises(records.BadRecord, match=r"line 1 of .*train.jsonl.*--config.data.allow_outside_paths=true"):
            source[0]
        config.data.allow_outside_paths = True
        assert open_source(str(folder / "train.jsonl"), config.data, seed=0, size=8, noise=0.0)[0].images[0].shape == (8, 8, 3)
    finally:
        records.OPTION_NAMES.update(saved)
