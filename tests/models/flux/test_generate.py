"""The generate CLI end to end on the tiny pipeline (a subprocess, as users run it)."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run([sys.executable, "-m", "rdance.run.generate", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_generate_writes_pngs_and_jsonl(flux_pipe, rd_pipe, tmp_path):
    out = tmp_path / "out"
    result = run(f"--pipeline={flux_pipe[0]}", f"--out_dir={out}", "--prompts=a cat", "--prompts=a dog",
                 "--prompts=a mat", "--height=16", "--width=16", "--steps=2", "--batch_size=2", "--seed=7",
                 "--max_sequence_length=8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3/3 images" in result.stderr
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in lines] == [
        ("00000.png", "a cat", 7), ("00001.png", "a dog", 8), ("00002.png", "a mat", 9)]
    # The recorded seed regenerates the image.
    again = rd_pipe(["a mat"], seeds=[9], height=16, width=16, num_steps=2, max_sequence_length=8)[0]
    png = np.asarray(Image.open(out / "00002.png"))
    assert png.shape == (16, 16, 3) and np.abs(png.astype(int) - again.astype(int)).max() <= 1


def test_generate_without_prompts_fails_clearly(flux_pipe, tmp_path):
    result = run(f"--pipeline={flux_pipe[0]}", f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "no prompts" in result.stderr


def test_generate_best_of_n_with_a_reward_model_verifier(flux_pipe, rm_folder, tmp_path):
    out = tmp_path / "searched"
    result = run(f"--pipeline={flux_pipe[0]}", f"--out_dir={out}", "--prompts=a cat", "--prompts=a dog",
                 "--height=16", "--width=16", "--steps=2", "--batch_size=2", "--max_sequence_length=8",
                 "--search=best_of_n", "--search_n=3", f"--verifier={rm_folder}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in lines] == ["a cat", "a dog"]
    assert all(r["sampling_units"] == 3.0 and 0.0 <= r["verifier_score"] <= 1.0 for r in lines)
    assert "compute: 12 generator evaluations (3.00x plain sampling per prompt), 6 verifier images" in result.stdout
    assert np.asarray(Image.open(out / "00000.png")).shape == (16, 16, 3)
