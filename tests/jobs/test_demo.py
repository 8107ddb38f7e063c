"""`python -m rdance.run.demo` end to end on its CI variant (tiny models, a few steps of every stage,
the generator and both VLMs trained here): the report with its scaling table, grids, curves and
tables; a rerun that skips every stage; clear errors. The full variant's stages start from the
shipped models and name their digests."""
import json
import os

import pytest
from PIL import Image

from rdance.jobs.stages import load_config, resolve
from rdance.run import demo
from rdance.run.demo import DEFAULT_CONFIG
from rdance.world import pretrained
from tests.jobs.conftest import run_module

STAGES = ["generator", "pairs", "vlm_small", "rm_small", "bank_small", "finetune_small", "vlm_large", "rm_large",
          "bank_large", "finetune_large", "finetune_control", "evaluate"]
N = len(STAGES) + 1     # and the report


def test_demo_runs_every_stage_and_writes_the_report(demo):
    workdir, out = demo
    for i, name in enumerate(STAGES, 1):
        assert f"stage {i}/{N} {name}: " in out and f"stage {i}/{N} {name}: done in" in out
        assert json.loads((workdir / name / "DONE.json").read_text())["stage"] == name
    assert f"stage {N}/{N} report: done" in out and "ETA" in out
    assert "[rm_large] eval at step 10" in out and "[finetune_large] step 4/4" in out

    scores = json.loads((workdir / "evaluate" / "scores.json").read_text())
    assert list(scores["generators"]) == ["before", "control", "small", "large"] and scores["samples_per_prompt"] == 2
    # Sample 0 of each held-out prompt is what fine-tuning's own eval scored at step 0.
    first = [json.loads(x) for x in open(workdir / "finetune_large" / "metrics.jsonl") if '"step": 0' in x]
    assert scores["generators"]["before"]["judge_sample0"] == pytest.approx(first[0]["eval/judge"], abs=1e-6)
    for run in ("small", "large", "control"):
        assert (workdir / f"finetune_{run}" / "bank" / "bank.json").exists()
    # The control is the large run with the reward's weight at 0; each size's RM starts from its own VLM.
    control = json.loads((workdir / "finetune_control" / "DONE.json").read_text())["command"]
    assert "--config.refl.scale=0.0" in control and f"--config.reward.path={workdir}/rm_large/export" in control
    for size in ("small", "large"):
        rm = json.loads((workdir / f"rm_{size}" / "DONE.json").read_text())["command"]
        assert f"--config.rm.pretrained={workdir}/vlm_{size}/export" in rm

    report = (workdir / "report" / "report.md").read_text()
    assert "## Reward scaling: RM sizes side by side" in report and "\n| control | large (" in report
    assert "| prompts | n | before | control | small | large |" in report and "\n| all | 8 | " in report
    assert "| small | 10 | in_domain | " in report and "| large | 10 | samples | " in report   # the RMs' accuracy
    for picture in ("comparison", "grid_before", "grid_large", "reward", "reward_std", "judge", "rm_accuracy",
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
        assert f"stage {i}/{N} {name}: finished earlier in" in again.stdout
    assert "[generator]" not in again.stdout and "report: " in again.stdout
    assert {p: p.stat().st_size for p in (workdir / "logs").iterdir()} == logs   # no child ran


def test_changed_settings_and_bad_flags_are_clear_errors(demo, tmp_path):
    workdir, _ = demo
    changed = run_module("rdance.run.demo", "--config=experiments/demo.py:ci", f"--workdir={workdir}",
                         "--config.rm.set.train.steps=11")
    assert changed.returncode != 0
    assert f"{workdir}/rm_small holds a finished 'rm_small' stage made with other settings" in changed.stderr
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


def test_the_full_demo_starts_from_the_shipped_models(monkeypatch):
    """No generator or VLM stage: the pairs, the RMs and the fine-tunings read the shipped folders,
    and a changed shipped file changes the stages that read it. The budgets sum to 30 minutes."""
    config = load_config(DEFAULT_CONFIG)
    stages = demo.build_stages(config)
    assert [s.name for s in stages] == ["pairs", "rm_small", "bank_small", "finetune_small", "rm_large", "bank_large",
                                        "finetune_large", "finetune_control", "evaluate"]
    by_name = {s.name: s for s in stages}
    assert by_name["pairs"].flags["generator"] == pretrained.folder("generator")
    assert by_name["finetune_large"].overrides["generator.path"] == pretrained.folder("generator")
    for size in ("small", "large"):
        assert by_name[f"rm_{size}"].overrides["rm.pretrained"] == pretrained.folder(f"vlm_{size}")
    assert sum(s.estimate_s for s in stages) <= 30 * 60

    place = lambda s: f"/tmp/demo/{s.name}"  # noqa: E731
    hashes = {s.name: s.hash for s in resolve(stages, place)[0]}
    shipped = pretrained.manifest()
    changed = dict(shipped, vlm_small=dict(shipped["vlm_small"], files={"model.safetensors": "0" * 64}))
    monkeypatch.setattr(pretrained, "manifest", lambda root=None: changed)
    monkeypatch.setattr(pretrained, "folder", lambda name, root=None, verify=True: os.path.join(pretrained.ROOT, name))
    again = {s.name: s.hash for s in resolve(demo.build_stages(config), place)[0]}
    # The small RM changes, and everything downstream of it: its bank and run, and the judging.
    assert [n for n in hashes if hashes[n] != again[n]] == ["rm_small", "bank_small", "finetune_small", "evaluate"]
