"""The toy entrypoint as a user runs it: bad overrides, kill -9 and SIGTERM, two hosts, fit check."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from rdance.core import status
from tests.conftest import REPO, curve, environment, run_two_processes

STEPS = 400
COMMON = ["--config=experiments/toy.py", "--config.train.log_every=1",
          "--config.train.checkpoint_every=10", "--config.optim.schedule=constant"]


def command(workdir, *extra, module="rdance.run.train_toy"):
    return [sys.executable, "-m", module, f"--workdir={workdir}", *COMMON, *extra]


def run(cmd, devices=8, timeout=300):
    return subprocess.run(cmd, cwd=REPO, env=environment(devices), capture_output=True, text=True,
                          timeout=timeout)


def losses(workdir):
    return curve(workdir, "loss")


def last_logged_step(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError, IndexError):
        return 0


def start_and_wait_for_step(cmd, workdir, step):
    proc = subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: last_logged_step(workdir) >= step, proc, f"step {step}", 240)
    return proc


def wait_until(condition, proc, what, seconds):
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, f"run ended before {what}:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = run(command(workdir, f"--config.train.steps={STEPS}"))
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(workdir)


def test_misspelt_override_fails_before_any_work(tmp_path):
    result = run(command(tmp_path / "w", "--config.train.stepz=3"))
    assert result.returncode != 0
    assert "unknown config key 'train.stepz'" in result.stderr
    assert "valid keys there: async_checkpoints, checkpoint_every, eval_every" in result.stderr
    assert not (tmp_path / "w").exists()


def test_wrong_type_override_is_refused(tmp_path):
    result = run(command(tmp_path / "w", "--config.train.steps=many"))
    assert result.returncode != 0 and "--config.train.steps=many" in result.stderr


def test_kill_9_then_resume_gives_the_uninterrupted_losses(tmp_path, uninterrupted):
    workdir = str(tmp_path)
    kill_at = random.randint(15, 120)
    proc = start_and_wait_for_step(command(workdir, f"--config.train.steps={STEPS}"), workdir, kill_at)
    # Checkpoints are written asynchronously: a fast run can pass step 15 before the step-10 one
    # is committed, and a kill then leaves nothing to resume from.
    checkpoints = os.path.join(workdir, "checkpoints")
    wait_until(lambda: os.path.isdir(checkpoints) and any(p.isdigit() for p in os.listdir(checkpoints)),
               proc, "a committed checkpoint", 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = last_logged_step(workdir)
    assert killed_at < STEPS, "the run finished before it could be killed"
    resumed = run(command(workdir, f"--config.train.steps={STEPS}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    np.testing.assert_allclose(losses(workdir), uninterrupted, rtol=1e-6)
    assert len(losses(workdir)) == STEPS


def test_sigterm_checkpoints_marks_preempted_and_exits_75(tmp_path):
    """SIGTERM: a checkpoint, WORKDIR/PREEMPTED naming it, exit status 75 (EX_TEMPFAIL), the log
    line for people; progress.json is whole JSON while the run goes. A finished rerun clears the
    marker."""
    workdir = str(tmp_path)
    proc = start_and_wait_for_step(command(workdir, "--config.train.steps=1000000"), workdir, 25)
    # metrics.jsonl is written just before progress.json: wait for the latter to catch up.
    wait_until(lambda: (status.read_progress(workdir) or {}).get("step", 0) >= 25, proc, "progress at step 25", 60)
    progress = json.loads(open(os.path.join(workdir, "progress.json")).read())
    assert progress["phase"] == "train" and progress["total"] == 1000000 and progress["step"] >= 25
    assert progress["steps_per_s"] > 0 and progress["eta_s"] > 0
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == status.EXIT_PREEMPTED == 75, output[-3000:]
    saved = max(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())
    assert saved >= 25
    checkpoint = os.path.join(workdir, "checkpoints", str(saved))
    assert f"preempted: saved {checkpoint}" in output
    marker = status.read_preempted(workdir)
    assert marker["step"] == saved and marker["checkpoint"] == checkpoint and marker["time"] > 0
    assert status.read_progress(workdir)["phase"] == "preempted"

    resumed = run(command(workdir, f"--config.train.steps={saved + 5}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status.read_preempted(workdir) is None
    assert status.read_progress(workdir) | {"time": 0, "steps_per_s": 0} == {
        "phase": "done", "step": saved + 5, "total": saved + 5, "steps_per_s": 0, "eta_s": 0.0, "time": 0}


def test_two_processes_match_one(tmp_path, uninterrupted):
    workdir = str(tmp_path)
    port = portpicker.pick_unused_port()
    flags = [f"--config.train.steps={STEPS}", "--config.mesh.shape=(2,4,1)", "--distributed",
             f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    run_two_processes(lambda i: command(workdir, *flags, f"--process_id={i}"), timeout=300)
    got = losses(workdir)[:20]
    np.testing.assert_allclose(got, uninterrupted[:20], rtol=1e-5)


def test_fit_check_reports_tpu_memory():
    result = run([sys.executable, "-m", "rdance.run.fit_check", "--config=experiments/toy.py",
                  "--topology=v5e:2x2", "--config.mesh.shape=(1,-1,1)"])
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    lines = dict(map(str.strip, line.split("  ", 1)) for line in result.stdout.splitlines() if line.strip())
    assert lines["devices"] == "4"
    assert lines["HBM per device"] == "16.000 GiB"
    peak, unit = lines["peak per device"].split()
    assert float(peak) > 0 and unit in ("MiB", "GiB")
    assert lines["fits"].startswith("yes")
    # The compiled step's cost, per device: the toy MLP's matmuls (in 16, hidden 64 x 3, out 4;
    # 32 rows split 4 ways) are 4.2e5 FLOPs per device forward and backward; the elementwise rest
    # (GELU, biases, AdamW) adds under 2x. The global program would be 4x that.
    flops, unit = lines["FLOPs per step"].split(" ", 1)
    matmuls = 2 * 32 * (16 * 64 + 2 * 64 * 64 + 64 * 4) * 3 / 4
    assert unit == "per device (XLA cost analysis)" and matmuls < float(flops) < 2 * matmuls
    assert lines["bytes accessed"].endswith("per device (XLA cost analysis)")
    # The roofline: the larger of FLOPs at v5e's 197 TFLOP/s and bytes at 819 GB/s, labelled an estimate.
    estimate = lines["roofline estimate"]
    assert "per step per chip" in estimate and "-bound (estimate: the larger of compute" in estimate
    assert "at 197 TFLOP/s" in estimate and "at 819 GB/s, TPU v5e" in estimate
    step_ms, compute_ms = float(estimate.split()[0]), float(estimate.split("compute ")[1].split()[0])
    assert compute_ms == pytest.approx(float(flops) / 197e12 * 1e3, rel=1e-2) and step_ms >= compute_ms


def test_fit_check_rejects_unknown_topology():
    result = run([sys.executable, "-m", "rdance.run.fit_check", "--config=experiments/toy.py",
                  "--topology=v9x:2x2"])
    assert result.returncode != 0 and "--topology='v9x:2x2'" in result.stderr
