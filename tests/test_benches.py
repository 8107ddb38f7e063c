"""The benchmarks run: each is a script no other test imports, so an API change could break one
unseen (bench_finetune did, twice). Tiny models, one repetition, the suite's 8 fake devices."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(*args: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("script,args,row", [
    # Two graded steps: the multi-step ReFL chain compiles too (one step is what the loop tests run).
    ("bench/bench_finetune.py", ["--tiny", "--reps=1", "--grad_steps=2"], "| whole ReFL step (compiled)"),
    ("bench/bench_reward.py", ["--configs=smoke", "--steps=1"], "| smoke |"),
    ("bench/bench_convert.py", ["--rows=4,8", "--min_px=32", "--max_px=48"], "| 8 |"),
    ("bench/bench_convert.py", ["--rows=4,8", "--min_px=32", "--max_px=48", "--workers=1", "--beam"], "| 8 | Beam"),
    ("bench/bench_attention.py", ["--lengths=40", "--q_chunk=16", "--k_chunk=16", "--reps=1"], "| chunked | 40 |"),
    ("bench/bench_clip_world.py", ["--steps=0,2", "--pairs=8", "--batch_size=4", "--width=32", "--layers=1",
                                   "--heads=2", "--heldout_share=0.2"], "| 2 |"),
    ("bench/bench_wan.py", ["--tiny", "--size=32", "--frames=5", "--text_tokens=16", "--reps=1"], "| VAE decode"),
    ("bench/bench_motion_judge.py", ["--prompts=3", "--sizes=32", "--frames=4"], "| 32 | faithful |"),
    ("bench/bench_clip_vae.py", ["--steps=2", "--every=2", "--base_dim=4", "--batch_size=1", "--first_frame"], "| 2 |"),
])
def test_bench_prints_its_table(script, args, row):
    out = run_bench(script, *args)
    line = next(line for line in out.splitlines() if line.startswith(row))
    assert "nan" not in line, line


def test_bench_search_prints_its_table(gen_folder, rm_folder, tmp_path):
    common = [f"--generator={gen_folder}", "--prompts=2", "--seeds=2", "--steps=4", "--max_units=2",
              f"--pool_cache={tmp_path / 'pools'}"]
    out = run_bench("bench/bench_search.py", *common, f"--rm=tiny={rm_folder}", f"--out={tmp_path / 'rows.json'}")
    rows = [line for line in out.splitlines() if line.startswith(("| (none)", "| judge (oracle)", "| RM tiny"))]
    # No search once, then Best-of-2 and paths n=1 (2x) for each verifier; nothing above 2x.
    assert len(rows) == 5 and all("nan" not in row for row in rows), out
    saved = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["method"], r["compute"]) for r in saved] == [("none", 1)] + [("best_of_n", 2)] * 2 + [("paths", 2)] * 2
    # Two seeds each; no search is its own baseline, and the oracle's Best-of-2 never loses to it.
    assert all(len(r["judge"]) == 2 for r in saved) and saved[0]["gain"] == [0.0, 0.0]
    assert min(saved[1]["gain"]) >= 0, saved[1]
    # A second run with another verifier scores the cached pools: the same samples, no search the same.
    again = run_bench("bench/bench_search.py", *common, "--no_oracle", f"--rm=again={rm_folder}", "--methods=best_of_n",
                      f"--out={tmp_path / 'again.json'}")
    reused = json.loads((tmp_path / "again.json").read_text())["rows"]
    assert reused[0]["judge_per_prompt"] == saved[0]["judge_per_prompt"], again
    assert reused[1]["judge"] == saved[2]["judge"], again     # the same RM on the same pool keeps the same samples
    # The comparison of two RMs over both runs: the same RM on the same pool differs by exactly 0.
    table = run_bench("bench/search_compare.py", f"--runs={tmp_path / 'rows.json'},{tmp_path / 'again.json'}",
                      "--rms=tiny,again")
    best_of_2 = next(line for line in table.splitlines() if line.startswith("| best_of_n | 2x |"))
    assert "| +0.000 ± 0.000 | +0.000 / +0.000 | ± 0.000 | - |" in best_of_2, table


def test_probe_motion_words_prints_its_table_and_refuses_a_still_vocabulary(rm_folder, tmp_path):
    import ml_collections
    from flax import nnx
    from rdance.models.internvl.config import load_config
    from rdance.reward.folder import export, write_model_folder
    from rdance.reward.model import RewardNet
    from rdance.world.vlm import world_corpus
    from tests.conftest import tiny_rm_config

    config = tiny_rm_config("caption")
    clips = ml_collections.ConfigDict(dict(train="world_clip_captions", eval_sets=""))
    base = write_model_folder(config.model, 32, str(tmp_path / "base"), world_corpus(clips))
    params = nnx.to_pure_dict(nnx.state(RewardNet(load_config(base), regression_head=False, rngs=nnx.Rngs(0)), nnx.Param))
    vlm = export(params, base, str(tmp_path / "export"), config)
    out = run_bench("bench/probe_motion_words.py", f"--vlm={vlm}", "--clips=6", "--frames=3", "--batch=4")
    row = next(line for line in out.splitlines() if line.startswith(f"| {vlm} |"))
    assert row.endswith("| 6 |") and "nan" not in row, out
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    still = subprocess.run([sys.executable, "bench/probe_motion_words.py", f"--vlm={rm_folder}", "--clips=2"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert still.returncode != 0 and "lacks the motion words" in still.stderr, still.stderr[-2000:]
