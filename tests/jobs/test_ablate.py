"""`python -m rdance.run.ablate` on its CI variant: one ablation, two arms, one seed, end to end, reusing
the CI demo's generator and VLM (same settings, hence the same hashes)."""
import json

from tests.jobs.conftest import run_module


def test_tiny_ablation_runs_and_tabulates(tmp_path, compile_cache, demo):
    args = (f"--workdir={tmp_path}", "--variant=ci", "--only=paradigm", "--arms=pointwise,pairwise")
    result = run_module("rdance.run.ablate", *args, f"--reuse={demo[0]}", cache=compile_cache)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert "2 arm-seeds, 6 distinct stages, 6 to run" in out
    assert f"stage 1/6 generator.paradigm.pointwise.s0: reused {demo[0] / 'generator'}" in out
    assert f"stage 2/6 vlm.paradigm.pointwise.s0: reused {demo[0] / 'vlm'}" in out
    assert "### Reward paradigm" in out and "| arm | judge after RL | RM accuracy | late reward std |" in out
    results = json.loads((tmp_path / "results.json").read_text())["paradigm"]
    assert list(results["arms"]) == ["pointwise", "pairwise"]
    for arm in results["arms"].values():
        assert len(arm["judge"]) == 1 and 0.0 <= arm["judge"][0] <= 1.0
        assert 0.0 <= arm["rm_accuracy"][0] <= 1.0
    assert "pairwise generative (with reference) | " in (tmp_path / "results.md").read_text()
    # The pointwise RM scores without references: only the pairwise arm built a bank.
    banks = sorted(p.parent.parent.name.split("-")[0] for p in tmp_path.glob("stages/finetune-*/bank/bank.json"))
    assert banks == ["finetune"] and len(list(tmp_path.glob("stages/finetune-*"))) == 2
    assert len(list(tmp_path.glob("stages/generator-*"))) == 1 and len(list(tmp_path.glob("stages/vlm-*"))) == 1

    planned = run_module("rdance.run.ablate", *args, "--plan")
    assert planned.returncode == 0 and "6 distinct stages, 0 to run" in planned.stdout
    bad = run_module("rdance.run.ablate", f"--workdir={tmp_path}", "--only=nope")
    assert bad.returncode != 0 and "no ablation" in bad.stderr
