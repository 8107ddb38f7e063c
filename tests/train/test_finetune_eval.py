"""The prompt-file eval during fine-tuning (config section ``eval``, rdance.train.prompt_eval), and
the GSB of the world generator before against after a fine-tuning run, both as a user types them."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rdance.core.config_checks import ConfigValueError
from rdance.train.finetune_loop import finetune
from tests.conftest import REPO, environment, make_clip_folder, make_rm_folder, metrics_by_step, run_module
from tests.train.conftest import command, tiny_config, tiny_flags

PROMPTS = "Prompts,Category\na red circle,colour\ntwo blue squares,count\n"   # DrawBench's layout


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scorers")
    return make_rm_folder(folder / "rm", paradigm="pointwise"), make_clip_folder(folder / "clip")


@pytest.mark.parametrize("override, message", [
    ({"eval.prompts": "/nonexistent/prompts.csv", "eval.rm": "/tmp"},
     "config key eval.prompts=/nonexistent/prompts.csv: /nonexistent/prompts.csv: no such file"),
    ({"eval.every": 0}, "config key eval.every=0 is out of range: it must be a whole number >= 1"),
    ({"eval.prompts": "PROMPTS"}, "has nothing to score it: set --config.eval.rm=FOLDER"),
    ({"eval.prompts": "PROMPTS", "eval.clip": "/nonexistent/clip"}, "config key eval.clip=/nonexistent/clip: no such folder"),
])
def test_bad_eval_config_fails_before_loading_anything(tmp_path, override, message):
    (tmp_path / "p.csv").write_text(PROMPTS)
    override = {k: str(tmp_path / "p.csv") if v == "PROMPTS" else v for k, v in override.items()}
    # Neither model folder exists: the check must come first.
    config = tiny_config("/nonexistent/gen", "/nonexistent/rm", **override)
    with pytest.raises(ConfigValueError) as e:
        finetune(config, str(tmp_path / "never"))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "never")


def test_missing_prompt_file_stops_the_entrypoint_in_one_line(tmp_path, gen_folder, rm_folder):
    workdir = tmp_path / "w"
    result = subprocess.run(command(workdir, tiny_flags(gen_folder, rm_folder, **{
        "eval.prompts": str(tmp_path / "missing.txt"), "eval.rm": rm_folder})), cwd=REPO, env=environment(),
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: config key eval.prompts={tmp_path}/missing.txt: {tmp_path}/missing.txt: no such file; give a "
        ".txt, .jsonl, .csv or .tsv prompt file")


def test_eval_during_finetuning_equals_evaluate_of_the_export(tmp_path, gen_folder, scorers, compile_cache):
    """4 steps, eval every 2 on a 2-prompt file with a pointwise RM (two criteria) and a CLIP: the
    scalars at 0, 2 and 4, and those at 4 are what `rdance.run.evaluate` gives the exported generator
    with the same seeds (the export holds the EMA parameters the eval scored)."""
    rm, clip = scorers
    prompts = tmp_path / "drawbench.csv"
    prompts.write_text(PROMPTS)
    workdir = tmp_path / "ft"
    # The pointwise RM trains too: no reference bank to build.
    flags = tiny_flags(gen_folder, rm, **{
        "train.steps": 4, "eval.every": 2, "eval.prompts": str(prompts), "eval.samples": 2, "eval.seed": 3,
        "eval.rm": rm, "eval.criteria": "alignment,aesthetics", "eval.clip": clip})
    result = subprocess.run(command(workdir, flags), cwd=REPO, env=environment(cache=compile_cache),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    by_step = metrics_by_step(workdir)
    names = ("eval/rm/alignment", "eval/rm/aesthetics", "eval/clip_score")
    assert [s for s in sorted(by_step) if "eval/clip_score" in by_step[s]] == [0, 2, 4]
    for step in (0, 2, 4):
        assert all(np.isfinite(by_step[step][n]) for n in names), by_step[step]
    assert 0 <= by_step[4]["eval/rm/alignment"] <= 1
    assert (workdir / "eval" / "grid.png").is_file()

    out = tmp_path / "evaluate"
    done = run_module("rdance.run.evaluate", f"--generators=tuned={workdir}/export", f"--prompt_file={prompts}",
                      f"--out_dir={out}", "--samples_per_prompt=2", "--seed=3", "--batch_size=8", "--steps=4",
                      f"--rm={rm}", "--criteria=alignment,aesthetics", f"--clip={clip}", devices=1, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    standalone = {f"eval/rm/{c}": np.mean([r["rewards"] for r in rows if r.get("criteria") == c])
                  for c in ("alignment", "aesthetics")}
    standalone["eval/clip_score"] = np.mean([r["clip_score"] for r in rows if "clip_score" in r])
    for n in names:
        np.testing.assert_allclose(by_step[4][n], standalone[n], rtol=1e-5, err_msg=n)   # measured: equal to the last digit


def test_gsb_of_the_generator_before_and_after_finetuning(tmp_path, reference_run, gen_folder, rm_folder):
    """`rdance.run.evaluate` on the world generator folder before and the fine-tuning run's export
    after, judged by the pairwise RM it was fine-tuned against: Good + Same + Bad = the samples."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    out = tmp_path / "gsb"
    done = run_module("rdance.run.evaluate", f"--generators=before={gen_folder},after={reference_run}/export",
                      f"--prompt_file={prompts}", f"--out_dir={out}", "--samples_per_prompt=2", "--steps=4",
                      f"--rm={rm_folder}", devices=1, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("GSB of after against before"))
    good, same, bad, gsb = re.search(r"Good (\d+), Same (\d+), Bad (\d+), GSB ([-+.\d]+)", line).groups()
    assert int(good) + int(same) + int(bad) == 2 * 2, line
    assert float(gsb) == pytest.approx((int(good) - int(bad)) / 4, abs=1e-3)
    assert len((out / "gsb.jsonl").read_text().splitlines()) == 4


def test_bench_gsb_prints_the_table_for_a_demo_workdir(tmp_path, reference_run, gen_folder, rm_folder):
    """bench/bench_gsb.py --demo=WORKDIR on a folder shaped as the demo's (generator, finetune_large
    and rm_large stages' exports), at tiny size."""
    demo = tmp_path / "demo"
    for stage, folder in (("generator", gen_folder), ("finetune_large", f"{reference_run}/export"),
                          ("rm_large", rm_folder)):
        (demo / stage).mkdir(parents=True)
        os.symlink(folder, demo / stage / "export")
    done = subprocess.run([sys.executable, "bench/bench_gsb.py", f"--demo={demo}", f"--out_dir={tmp_path / 'out'}",
                           "--train_prompts=16", "--eval_prompts=2", "--samples_per_prompt=1", "--steps=4"],
                          cwd=REPO, env=environment(devices=1), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {demo}/generator/export |"))
    comparisons, good, same, bad = (int(x) for x in row.split("|")[3:7])
    assert comparisons == 2 and good + same + bad == 2, row
    lines = done.stdout.splitlines()
    judged = lines[lines.index("| comparisons | Good | Same | Bad | GSB | RM agrees where the judge differs | "
                               "RM's P(after wins) where the judge ties |") + 2]
    comparisons, good, same, bad = (int(x) for x in judged.split("|")[1:5])
    assert comparisons == 2 and good + same + bad == 2, judged
    assert len((tmp_path / "out" / "prompts.txt").read_text().splitlines()) == 2
