import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from rdance.data.records import PreferenceRecord, write_jsonl
from rdance.world.pairs import PreferencePairs

from tests.conftest import REPO

def run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "rdance.run.score", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_scores_pairs_and_points_from_jsonl(tmp_path, rm_folder):
    pairs = PreferencePairs(3, seed=1)
    records = [pairs[i] for i in range(3)] + [PreferenceRecord("a red circle", (pairs[0].images[0],), 1)]
    write_jsonl(records, str(tmp_path / "in.jsonl"))
    result = run(f"--rm={rm_folder}", f"--input={tmp_path / 'in.jsonl'}", f"--out={tmp_path / 'out.jsonl'}",
                 "--explain", "--batch_size=2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [r["kind"] for r in rows] == ["pairwise"] * 3 + ["pointwise"]
    assert all(0 < r["score"] < 1 for r in rows) and "rationale" in rows[0]
    assert "item" in result.stdout and "record 3" in result.stdout


def test_scores_a_folder_against_one_prompt(tmp_path, rm_folder):
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    result = run(f"--rm={rm_folder}", f"--input={tmp_path / 'imgs'}", "--prompt=a blue square")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0.png" in result.stdout and "1.png" in result.stdout
    missing = run(f"--rm={rm_folder}", f"--input={tmp_path / 'imgs'}")
    assert missing.returncode != 0 and "a folder input needs --prompt" in missing.stderr
