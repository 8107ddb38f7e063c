"""`python -m rdance.run.generate` with a world generator folder and inference-time search, as a
user types it: the verifier's scores and the search's compute land in samples.jsonl and on the
console; bad search flags stop before any model loads."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_module


def generate(*args):
    return run_module("rdance.run.generate", *args, devices=1, timeout=400)


def test_search_over_paths_with_a_pairwise_rm_writes_scores_and_compute(gen_folder, rm_folder, tmp_path):
    out = tmp_path / "out"
    result = generate(f"--pipeline={gen_folder}", f"--out_dir={out}", "--prompts=a red circle",
                      "--prompts=two blue squares", "--steps=4", "--batch_size=2", "--search=paths",
                      f"--verifier={rm_folder}", "--search_n=2", "--search_m=2", "--search_start=2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["row"]) for r in lines] == [("00000.png", "a red circle", 0),
                                                                   ("00001.png", "two blue squares", 1)]
    # 2 paths x 2 steps, then rounds 2->1->3 and 3->2->4 of 4 candidates x 2 steps: 20 NFE = 5x.
    assert all(r["sampling_units"] == 5.0 and 0.0 <= r["verifier_score"] <= 1.0 for r in lines)
    assert lines[0]["search"] == "paths" and lines[0]["search_start"] == 2
    assert "compute: 40 generator evaluations (5.00x plain sampling per prompt), 16 verifier images" in result.stdout
    assert np.asarray(Image.open(out / "00001.png")).shape == (32, 32, 3)


def test_a_world_folder_samples_without_search(gen_folder, tmp_path):
    out = tmp_path / "plain"
    result = generate(f"--pipeline={gen_folder}", f"--out_dir={out}", "--prompts=a red circle", "--steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert line["verifier_score"] is None and line["sampling_units"] == 1.0


@pytest.mark.parametrize("flags, message", [
    (["--search=best_of_n"], "--search=best_of_n needs --verifier"),
    (["--search=paths", "--verifier=/nowhere", "--search_forward=2", "--search_backward=2"],
     "forward_steps < backward_steps"),
])
def test_bad_search_flags_are_named(gen_folder, tmp_path, flags, message):
    result = generate(f"--pipeline={gen_folder}", f"--out_dir={tmp_path}", "--prompts=a red circle", *flags)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
