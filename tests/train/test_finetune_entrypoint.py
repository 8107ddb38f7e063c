"""rdance.run.finetune as a user runs it: kill -9 and resume (the same reward curve, the bank built
once), two processes against one, and a short RWR run with LoRA, the anchor and accumulation."""
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import portpicker

from rdance.world.generator import WorldGenerator
from rdance.train.finetune_loop import finetune
from rdance.train.host import to_host
from tests.conftest import REPO, curve, environment, metrics_by_step, run_two_processes
from tests.train.conftest import REFERENCE, command, tiny_config, tiny_flags

STEPS = REFERENCE["train.steps"]


def test_reference_run_logs_the_monitors_and_exports(reference_run, gen_folder):
    by_step = metrics_by_step(reference_run)
    assert sorted(by_step) == list(range(STEPS + 1))
    for key in ("reward/mean", "reward/std", "reward/window_std", "reward/collapse_frac", "diversity",
                "grad_norm", "learning_rate", "refl_step"):
        assert np.isfinite(by_step[1][key]), key
    assert 2 <= min(curve(reference_run, "refl_step")) and max(curve(reference_run, "refl_step")) <= 3
    assert [s for s in by_step if "eval/judge" in by_step[s]] == [0, 5, 10]
    assert "eval/judge_ema" in by_step[10] and "eval/judge/single" in by_step[10]
    for check in ("present", "count", "colour_found", "shape_given_colour"):
        assert 0.0 <= by_step[10][f"eval/check/{check}_ema"] <= 1.0, check
    assert os.listdir(os.path.join(reference_run, "tensorboard"))
    with np.load(os.path.join(reference_run, "bank", "bank.npz")) as bank:
        assert bank["images"].shape == (16, 1, 32, 32, 3) and bank["wins"].shape == (16, 4)
    # The export is the EMA of the trained parameters: loadable, and moved from the start.
    start = WorldGenerator.from_pretrained(gen_folder).initial_params(None, None)
    tuned = WorldGenerator.from_pretrained(os.path.join(reference_run, "export")).initial_params(None, None)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), tuned, start))
    assert all(np.isfinite(moved)) and max(moved) > 0


def test_kill_9_then_resume_gives_the_same_reward_curve(tmp_path, reference_run, gen_folder, rm_folder,
                                                        compile_cache):
    workdir, cache = tmp_path / "run", compile_cache
    cmd = command(workdir, tiny_flags(gen_folder, rm_folder, **REFERENCE))
    proc = subprocess.Popen(cmd, cwd=REPO, env=environment(cache=cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "2").exists():   # finalised: orbax renames its tmp dir
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 2"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(metrics_by_step(workdir))
    assert killed_at < STEPS, "the run finished before it could be killed"
    bank_written = os.stat(workdir / "bank" / "bank.npz").st_mtime_ns

    resumed = subprocess.run(cmd, cwd=REPO, env=environment(cache=cache), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "reusing the reference bank" in resumed.stderr
    assert os.stat(workdir / "bank" / "bank.npz").st_mtime_ns == bank_written
    for key in ("reward/mean", "reward/window_std", "loss", "eval/judge"):
        np.testing.assert_allclose(curve(workdir, key), curve(reference_run, key), rtol=1e-6, err_msg=key)
    assert len(curve(workdir, "reward/mean")) == STEPS


def test_two_processes_match_one(tmp_path, reference_run, gen_folder, rm_folder):
    """Two processes of 4 devices each, on the same (2, 2, 2) mesh, give the one-process curve.
    They start from the reference's bank (a run reuses the bank its workdir holds)."""
    shutil.copytree(os.path.join(reference_run, "bank"), tmp_path / "bank")
    steps = 4
    port = portpicker.pick_unused_port()
    flags = tiny_flags(gen_folder, rm_folder, **{**REFERENCE, "train.steps": steps, "monitor.eval_every": 0}) + [
        "--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    outputs = run_two_processes(lambda i: command(tmp_path, flags + [f"--process_id={i}"]))
    assert "reusing the reference bank" in outputs[0]
    for key in ("reward/mean", "loss", "grad_norm"):
        np.testing.assert_allclose(curve(tmp_path, key), curve(reference_run, key)[:steps], rtol=1e-5, atol=1e-7,
                                   err_msg=key)


def test_rwr_with_lora_anchor_and_accumulation(tmp_path, gen_folder, rm_folder, devices):
    config = tiny_config(gen_folder, rm_folder, **{
        "algo": "rwr", "lora.rank": 4, "anchor.weight": 0.5, "optim.grad_accum_steps": 2,
        "train.steps": 3, "monitor.eval_every": 3, "monitor.grid_every": 3, "mesh.shape": (1, 1, 1)})
    result = finetune(config, str(tmp_path), devices=devices[:1])
    last = metrics_by_step(tmp_path)[3]
    for key in ("rwr/max_weight", "anchor_loss", "reward/collapse_frac", "diversity", "eval/judge"):
        assert np.isfinite(last[key]), key
    assert 1.0 <= last["rwr/max_weight"] <= 2.0       # G = 2 samples: weights in [0, 2], mean 1
    factors = jax.tree.leaves(to_host(result.state.params))
    assert sum(x.size for x in factors) < 20_000       # only the LoRA factors train
    # Training moved the factors, so the exported generator (base + A B) left the starting one.
    start = WorldGenerator.from_pretrained(gen_folder).initial_params(None, None)
    tuned = WorldGenerator.from_pretrained(str(tmp_path / "export")).initial_params(None, None)
    kernel = ("transformer", "transformer_blocks", "attn", "to_q", "kernel")
    get = lambda tree: tree[kernel[0]][kernel[1]][kernel[2]][kernel[3]][kernel[4]]  # noqa: E731
    assert np.abs(get(tuned) - get(start)).max() > 0
    np.testing.assert_array_equal(tuned["text"]["shared"]["embedding"], start["text"]["shared"]["embedding"])
