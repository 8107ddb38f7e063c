"""What the launcher starts on a pod's workers, run as two local CPU processes, matches one process.

The scripts are the ones the launcher sends for a v5p-16 (two workers): the environment file
that bootstrap writes, then the run script, each worker in its own home directory. Only what a
TPU pod provides by itself is rewritten: the coordinator (localhost and a free port, with gloo for
CPU collectives, which --distributed selects), 4 CPU devices per process instead of 4 chips, and
a local workdir instead of the bucket.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import portpicker

from tests.conftest import REPO, cpu_xla_flags

SLICE = ["--name=rd", "--project=rdance-test", "--zone=us-east5-a", "--accelerator=v5p-16"]
BUCKET = "gs://rdance-test/pod"
FLAGS = ["--config=experiments/toy.py", "--config.train.steps=10", "--config.train.log_every=1",
         "--config.optim.schedule=constant",
         "--config.mesh.shape=(2,4,1)"]


def losses(workdir):
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r["loss"] for r in sorted(records, key=lambda r: r["step"])]


def cpu_env(devices, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=cpu_xla_flags(devices), **extra)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def worker_home(root, env_script):
    """A home directory as bootstrap leaves it: the checkout, the venv's python, ~/rdance.env."""
    root.mkdir()
    (root / "rdance").symlink_to(REPO)
    python = root / "rdance-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    subprocess.run(["bash", "-c", env_script], env=dict(os.environ, HOME=str(root)), check=True)
    return root


def test_two_pod_workers_match_one_process(tpu, gcloud, launch, tmp_path):
    assert launch("bootstrap", *SLICE, "--repo=https://github.com/example/rdance.git",
                  env=gcloud.env).returncode == 0
    run = launch("run", *SLICE, "--", "rdance.run.train_toy", f"--workdir={BUCKET}", *FLAGS, env=gcloud.env)
    assert run.returncode == 0, run.stderr
    [(*_, bootstrap), (*_, run_command)] = gcloud.calls()
    env_script = tpu.env_file_script({})
    assert env_script.rstrip() in bootstrap
    script = run_command[len("--command="):]
    assert script.count(" --distributed &") == 1, "a two-worker slice runs with --distributed"

    # The one-process reference runs while the two workers start.
    single = str(tmp_path / "single")
    reference = subprocess.Popen([sys.executable, "-m", "rdance.run.train_toy", f"--workdir={single}", *FLAGS],
                                 cwd=REPO, env=cpu_env(8), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)

    workdir, port = str(tmp_path / "pod"), portpicker.pick_unused_port()
    homes = []
    for i in range(2):
        home = worker_home(tmp_path / f"worker{i}", env_script)
        local = script.replace(f"--workdir={BUCKET}", f"--workdir={workdir}").replace(
            " --distributed &", f" --distributed --coordinator_address=localhost:{port} "
                                f"--num_processes=2 --process_id={i} &")
        started = subprocess.run(["bash", "-c", local], env=cpu_env(4, HOME=str(home)),
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 0 and started.stdout.startswith("started train_toy on "), started.stderr
        homes.append(home)

    output = reference.communicate(timeout=240)[0]
    assert reference.returncode == 0, output[-3000:]
    exits = [home / "rdance_logs" / "train_toy.exit" for home in homes]
    deadline = time.time() + 240
    while not all(e.exists() for e in exits):
        assert time.time() < deadline, "the workers did not finish"
        time.sleep(0.2)
    worker_logs = [(home / "rdance_logs" / "train_toy.log").read_text() for home in homes]
    for exit_file, log in zip(exits, worker_logs):
        assert exit_file.read_text().strip() == "0", log[-3000:]
    assert "process 1/2, 4 local devices, 8 global" in worker_logs[1]

    pod, one = losses(workdir), losses(single)
    assert len(pod) == len(one) == 10
    np.testing.assert_allclose(pod, one, rtol=1e-5)
