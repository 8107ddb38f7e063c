"""The scripts the launcher sends to every worker, run here by bash in a fake home directory:
bootstrap (twice, idempotent, following a ref), run, status and stop."""
import os
import signal
import subprocess
import sys
import time

import pytest

# Stands in for an rdance entrypoint: logs its flags and environment, then trains until done,
# failing, or SIGTERM, after which it logs what rdance's loop logs and exits 75 as it does
# (rdance.core.status.EXIT_PREEMPTED). MODE=done_saying_preempted finishes (exit 0) with that line
# in its log: the exit status decides, not the log.
FAKE_ENTRYPOINT = """
import os, signal, sys, time
print("argv", sys.argv[1:], "PYTHONUNBUFFERED", os.environ.get("PYTHONUNBUFFERED"),
      "MODE", os.environ["MODE"])
mode = os.environ["MODE"]
if mode == "fail":
    sys.exit(3)
if mode == "done":
    sys.exit(0)
if mode == "done_saying_preempted":
    print("preempted: saved /work/checkpoints/7; rerun the same command to resume")
    sys.exit(0)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while not stop:
    time.sleep(0.02)
print("preempted: saved /work/checkpoints/7; rerun the same command to resume")
sys.exit(75)
"""


def bash(script, home, check=False, extra_env=None):
    env = dict(os.environ, HOME=str(home), **(extra_env or {}))
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, check=check)


@pytest.fixture
def worker(tmp_path):
    """A home directory laid out as bootstrap leaves it, with a fake entrypoint and venv."""
    home = tmp_path / "home"
    package = home / "rdance" / "rdance"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "run").mkdir()
    (package / "run" / "__init__.py").write_text("")
    (package / "run" / "train_toy.py").write_text(FAKE_ENTRYPOINT)   # rdance.run.train_toy
    venv_python = home / "rdance-venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    venv_python.chmod(0o755)
    yield home
    pid_file = home / "rdance_logs" / "train_toy.pid"
    if pid_file.exists():  # a failed test must not leave its job behind
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def status(tpu, home):
    out = bash(tpu.status_script("train_toy"), home, check=True).stdout
    host = os.uname().nodename
    prefix = f"rdance-job train_toy {host}: "
    assert out.startswith(prefix) and out.endswith("\n") and out.count("\n") == 1, out
    return out[len(prefix):-1]


def test_run_status_stop_on_a_worker(tpu, worker):
    entry = tpu.Entry("rdance.run.train_toy", ("--config=experiments/toy.py", "--workdir=gs://b/run"))
    run = tpu.run_script("train_toy", entry)
    logs = worker / "rdance_logs"

    not_bootstrapped = bash(run, worker)
    assert not_bootstrapped.returncode == 1 and "is not bootstrapped" in not_bootstrapped.stderr
    assert status(tpu, worker) == "not started"

    bash(tpu.env_file_script({"MODE": "train"}), worker, check=True)
    started = time.time()
    result = bash(run, worker, check=True)
    assert time.time() - started < 10, "run must return at once, leaving the job in the background"
    assert result.stdout.startswith("started train_toy on ")
    wait_for(lambda: (logs / "train_toy.pid").exists() and "argv" in (logs / "train_toy.log").read_text())
    assert status(tpu, worker) == "running"
    log = (logs / "train_toy.log").read_text()
    assert "argv ['--config=experiments/toy.py', '--workdir=gs://b/run'] PYTHONUNBUFFERED 1 MODE train" in log

    pid = int((logs / "train_toy.pid").read_text())
    os.kill(pid, signal.SIGHUP)  # what the end of an ssh session with a terminal sends
    time.sleep(0.3)
    assert status(tpu, worker) == "running"

    again = bash(run, worker)
    assert again.returncode == 1 and "job train_toy is already running" in again.stderr

    stopped = bash(tpu.stop_script("train_toy"), worker, check=True)
    assert "SIGTERM sent" in stopped.stdout
    wait_for(lambda: (logs / "train_toy.exit").exists())
    assert status(tpu, worker) == "preempted"
    assert "not running" in bash(tpu.stop_script("train_toy"), worker, check=True).stdout

    # A failing run: the previous log is kept aside, the exit status is reported.
    bash(tpu.env_file_script({"MODE": "fail"}), worker, check=True)
    bash(run, worker, check=True)
    wait_for(lambda: (logs / "train_toy.exit").exists())
    assert status(tpu, worker) == "exited 3"
    assert len(list(logs.glob("train_toy.log.*"))) == 1

    bash(tpu.env_file_script({"MODE": "done"}), worker, check=True)
    bash(run, worker, check=True)
    wait_for(lambda: (logs / "train_toy.exit").exists())
    assert status(tpu, worker) == "exited 0"

    # The exit status tells preempted (75) from finished (0), whatever the log says.
    bash(tpu.env_file_script({"MODE": "done_saying_preempted"}), worker, check=True)
    bash(run, worker, check=True)
    wait_for(lambda: (logs / "train_toy.exit").exists())
    assert "preempted: saved" in (logs / "train_toy.log").read_text()
    assert status(tpu, worker) == "exited 0"


def git(cwd, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_bootstrap_is_idempotent_and_follows_the_ref(tpu, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "requirements.txt").write_text("jax==0.10.2\n")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "one")
    git(origin, "tag", "v1")
    first = git(origin, "rev-parse", "HEAD")

    # The worker's tools: python3 is this interpreter; pip records its calls; sudo (apt) must not run.
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    (home / "rdance-venv" / "bin").mkdir(parents=True)
    bin_.mkdir()
    tools = {
        bin_ / "python3": f'#!/bin/sh\nexec {sys.executable} "$@"\n',
        bin_ / "sudo": '#!/bin/sh\necho "sudo $*" >&2\nexit 99\n',
        home / "rdance-venv" / "bin" / "python": "#!/bin/sh\necho jax fake\n",
        home / "rdance-venv" / "bin" / "pip": f'#!/bin/sh\necho "$*" >> {tmp_path}/pip_calls\n',
    }
    for path, text in tools.items():
        path.write_text(text)
        path.chmod(0o755)
    path_env = {"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}

    def bootstrap(ref, **env):
        result = bash(tpu.bootstrap_script(str(origin), ref, env), home, extra_env=path_env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = bootstrap("v1", JAX_COMPILATION_CACHE_DIR="gs://b/cache dir")
    checkout = home / "rdance"
    assert git(checkout, "rev-parse", "HEAD") == first
    assert out.strip() == f"bootstrapped {os.uname().nodename}: rdance {first[:7]}, jax fake"
    assert (tmp_path / "pip_calls").read_text().splitlines() == [
        "install -q --upgrade pip", "install -q -e .[tpu] -c requirements.txt"]
    sourced = bash('. "$HOME/rdance.env"; echo "$PYTHONUNBUFFERED|$JAX_COMPILATION_CACHE_DIR"', home)
    assert sourced.stdout == "1|gs://b/cache dir\n"

    # New work on main: a second bootstrap updates the same checkout (untracked files survive,
    # so nothing was cloned again) and rewrites the environment.
    (checkout / "scratch").write_text("kept")
    (origin / "new.txt").write_text("new")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "two")
    bootstrap("main")
    assert git(checkout, "rev-parse", "HEAD") == git(origin, "rev-parse", "HEAD")
    assert (checkout / "scratch").read_text() == "kept" and (checkout / "new.txt").exists()
    assert "JAX_COMPILATION_CACHE_DIR" not in (home / "rdance.env").read_text()

    bootstrap(first)  # a commit
    assert git(checkout, "rev-parse", "HEAD") == first

    bad = bash(tpu.bootstrap_script(str(origin), "no-such-ref", {}), home, extra_env=path_env)
    assert bad.returncode != 0 and "no-such-ref" in bad.stderr
