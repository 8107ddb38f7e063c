"""`python -m rdance.run.evaluate` as a user types it (a child process: the entrypoint's flags
never enter the test process), on tiny world generators: GenEval's folder
layout, pointwise RM and CLIP scores, and a GSB head-to-head by a pairwise RM (a generator against itself
is all Same)."""
import json

import numpy as np

from rdance.reward.gsb import gsb_verdicts
from tests.conftest import make_clip_folder, make_generator_folder, make_rm_folder, run_module

GENEVAL = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a red circle"},
           {"tag": "counting", "include": [{"class": "square", "count": 2}], "prompt": "two blue squares"}]


def evaluate(*args):
    return run_module("rdance.run.evaluate", *args, devices=1, timeout=500)


def test_gsb_verdicts_by_hand():
    p, counts = gsb_verdicts([0.9, 0.5, 0.2, 0.7], [0.1, 0.5, 0.8, 0.6], margin=0.1)
    np.testing.assert_allclose(p, [0.9, 0.5, 0.2, 0.55])
    assert counts == dict(good=1, same=2, bad=1, gsb=0.0)


def test_head_to_head_and_geneval_layout(gen_folder, rm_folder, tmp_path):
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in GENEVAL))
    out = tmp_path / "eval"
    result = evaluate(f"--generators=a={gen_folder},b={gen_folder}", f"--prompt_file={prompts}", f"--out_dir={out}",
                      "--samples_per_prompt=2", "--steps=2", f"--rm={rm_folder}")
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("a", "b"):
        assert json.loads((out / label / "00001" / "metadata.jsonl").read_text()) == GENEVAL[1]
        assert sorted(p.name for p in (out / label / "00001" / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert (out / label / "grid.png").is_file()
    # The same generator and noise on both sides: P(yes) is the same in both orders, so p = 0.5.
    assert "Good 0, Same 4, Bad 0, GSB +0.000" in result.stdout
    lines = [json.loads(line) for line in (out / "gsb.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(line["verdict"] == "same" for line in lines)


def test_pointwise_and_clip_scores(gen_folder, tmp_path):
    rm = make_rm_folder(tmp_path / "rm", paradigm="pointwise")
    clip = make_clip_folder(tmp_path / "clip")
    other = make_generator_folder(tmp_path / "other", seed=5)
    prompts = tmp_path / "drawbench.csv"
    prompts.write_text("Prompts,Category\na red circle,colour\ntwo blue squares,count\n")
    out = tmp_path / "eval"
    result = evaluate(f"--generators=base={gen_folder},other={other}", f"--prompt_file={prompts}",
                      f"--out_dir={out}", "--samples_per_prompt=2", "--steps=2", f"--rm={rm}",
                      "--criteria=alignment,aesthetics", f"--clip={clip}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    rows = [r for r in lines if "criteria" in r]
    assert len(rows) == 2 * 2 * 2 and {r["criteria"] for r in rows} == {"alignment", "aesthetics"}
    assert all(len(r["rewards"]) == 2 and all(0 <= x <= 1 for x in r["rewards"]) for r in rows)
    assert {r["category"] for r in rows} == {"colour", "count"}
    clip_rows = [r for r in lines if "clip_score" in r]    # per generator and prompt, a score per sample
    assert len(clip_rows) == 2 * 2 and all(len(r["clip_score"]) == 2 for r in clip_rows)
    assert {(r["generator"], r["prompt"]) for r in clip_rows} == {(g, p) for g in ("base", "other")
                                                                 for p in ("a red circle", "two blue squares")}
    header = result.stdout.splitlines()[0]
    assert header == "| generator | seconds | RM alignment | RM aesthetics | clip_score |", header
    assert "| base |" in result.stdout and "| other |" in result.stdout


def test_bad_inputs_are_named(gen_folder, tmp_path):
    result = evaluate("--generators=a", f"--prompt_file={tmp_path}/x.txt", f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "write LABEL=FOLDER" in result.stderr
    (tmp_path / "p.csv").write_text("Caption2\nx\n")
    result = evaluate(f"--generators=a={gen_folder}", f"--prompt_file={tmp_path}/p.csv", f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "no prompt column" in result.stderr
    (tmp_path / "p.txt").write_text("a red circle\n")
    result = evaluate(f"--generators=a={gen_folder}", f"--prompt_file={tmp_path}/p.txt", f"--out_dir={tmp_path}",
                      f"--clip={gen_folder}")
    assert result.returncode != 0 and f"--clip={gen_folder}" in result.stderr and "preprocessor_config.json" in result.stderr
