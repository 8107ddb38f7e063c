"""`python -m rdance.run.demo` end to end on its CI variant (tiny models, a few steps of every stage):
the report with its grids, curves and tables; a rerun that skips every stage; clear errors."""
import json

import pytest
from PIL import Image

from tests.jobs.conftest import run_module

STAGES = ["generator", "pairs", "vlm", "rm", "bank", "finetune", "evaluate"]


def test_demo_runs_every_stage_and_writes_the_report(demo):
    workdir, out = demo
    for i, name in enumerate(STAGES, 1):
        assert f"stage {i}/8 {name}: " in out and f"stage {i}/8 {name}: done in" in out
        assert json.loads((workdir / name / "DONE.json").read_text())["stage"] == name
    assert "stage 8/8 report: done" in out and "ETA" in out
    assert "[rm] eval at step 10" in out and "[finetune] step 4/4" in out

    scores = json.loads((workdir / "evaluate" / "scores.json").read_text())
    assert set(scores["generators"]) == {"before", "after"} and scores["samples_per_prompt"] == 2
    # Sample 0 of each held-out prompt is what fine-tuning's own eval scored at step 0.
    first = [json.loads(x) for x in open(workdir / "finetune" / "metrics.jsonl") if '"step": 0' in x]
    assert scores["generators"]["before"]["judge_sample0"] == pytest.approx(first[0]["eval/judge"], abs=1e-6)
    assert (workdir / "finetune" / "bank" / "bank.json").exists()

    report = (workdir / "report" / "report.md").read_text()
    assert "## Judge score before and after fine-tuning" in report
    assert "| prompts | n | before (n × 2 samples) | after (n × 2 samples) | change |" in report and "\n| all | 8 | " in report
    assert "| in_domain | " in report and "| samples | " in report     # the RM's accuracy table
    for picture in ("comparison", "grid_before", "grid_after", "reward", "reward_std", "judge", "rm_accuracy",
                    "references"):
        assert f"]({picture}.png)" in report
        assert Image.open(workdir / "report" / f"{picture}.png").size[0] > 100
    assert report.count("data:image") == 0
    html = (workdir / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 8
    stages = json.loads((workdir / "stages.json").read_text())
    assert [s["name"] for s in stages] == STAGES and all(s["wall_s"] > 0 for s in stages)


def test_a_rerun_skips_every_stage(demo, compile_cache):
    workdir, _ = demo
    logs = {p: p.stat().st_size for p in (workdir / "logs").iterdir()}
    again = run_module("rdance.run.demo", "--config=experiments/demo.py:ci", f"--workdir={workdir}", cache=compile_cache)
    assert again.returncode == 0, again.stderr[-3000:]
    for i, name in enumerate(STAGES, 1):
        assert f"stage {i}/8 {name}: finished earlier in" in again.stdout
    assert "[generator]" not in again.stdout and "report: " in again.stdout
    assert {p: p.stat().st_size for p in (workdir / "logs").iterdir()} == logs   # no child ran


def test_changed_settings_and_bad_flags_are_clear_errors(demo, tmp_path):
    workdir, _ = demo
    changed = run_module("rdance.run.demo", "--config=experiments/demo.py:ci", f"--workdir={workdir}",
                         "--config.rm.set.train.steps=11")
    assert changed.returncode != 0
    assert f"{workdir}/rm holds a finished 'rm' stage made with other settings" in changed.stderr
    typo = run_module("rdance.run.demo", f"--workdir={tmp_path}", "--config.rm.set.train.stepz=3")
    assert typo.returncode != 0 and "unknown config key 'rm.set.train.stepz'" in typo.stderr
    extra = run_module("rdance.run.demo", f"--workdir={tmp_path}", "--config.rm.extra=optim.lr=1")
    assert extra.returncode != 0 and "unknown config key 'optim.lr'" in extra.stderr
    (tmp_path / "file").write_text("")
    not_dir = run_module("rdance.run.demo", f"--workdir={tmp_path / 'file'}")
    assert not_dir.returncode != 0 and "is a file, not a folder" in not_dir.stderr
    missing = run_module("rdance.run.demo")
    assert missing.returncode != 0 and "--workdir is required" in missing.stderr
    assert not list(tmp_path.glob("generator"))
