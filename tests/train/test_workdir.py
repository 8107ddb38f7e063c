"""What stops a job before any work: a bad config, an unwritable workdir, a workdir in use.
Each run here exits at start-up, leaving what the workdir held untouched."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from experiments import toy
from rdance.core import config_checks
from rdance.train import loop, workdir as workdirlib
from tests.train.test_entrypoint import REPO, command, run

EARLIER = '{"step": 10, "loss": 0.5}\n'   # metrics an earlier run wrote, which must survive


def earlier_run(workdir):
    os.makedirs(os.path.join(workdir, "checkpoints", "10"))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(EARLIER)


def untouched(workdir):
    return (open(os.path.join(workdir, "metrics.jsonl")).read() == EARLIER
            and os.listdir(os.path.join(workdir, "checkpoints")) == ["10"])


def error_line(result):
    """The run's last stderr line, after checking it failed with nothing else to read."""
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("key, value, allowed", [
    ("train.steps", -5, ">= 0"), ("train.log_every", 0, ">= 1"), ("train.checkpoint_every", 0, ">= 1"),
    ("data.global_batch_size", 0, ">= 1"), ("train.keep_checkpoints", 0, ">= 1")])
def test_count_out_of_range_names_key_value_and_range(key, value, allowed):
    c = toy.get_config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(config_checks.ConfigValueError) as e:
        loop.train(c, "/nonexistent/never/created", task=None)
    assert str(e.value).startswith(f"config key {key}={value} is out of range: it must be a whole number {allowed} (")
    assert str(e.value).endswith(f"set --config.{key}=N with N {allowed}")


def test_every_shipped_config_is_in_range():
    import glob
    import importlib
    for path in glob.glob(os.path.join(REPO, "experiments", "**", "*.py"), recursive=True):
        module = importlib.import_module(os.path.relpath(path, REPO)[:-3].replace(os.sep, "."))
        if hasattr(module, "get_config"):
            config_checks.check_bounds(module.get_config())


def test_bad_config_stops_the_entrypoint_in_one_line(tmp_path):
    workdir = str(tmp_path / "w")
    missing = run([sys.executable, "-m", "rdance.run.train_toy", f"--workdir={workdir}", "--config=experiments/tyo.py"])
    assert error_line(missing) == ("error: config file experiments/tyo.py does not exist; pass "
                                   "--config=experiments/NAME.py (the files in experiments/), with a path relative "
                                   "to where you run the command")
    zero = run(command(workdir, "--config.train.steps=5", "--config.train.log_every=0"))
    assert error_line(zero).startswith("error: config key train.log_every=0 is out of range: it must be a whole "
                                       "number >= 1")
    assert not os.path.exists(workdir)
    mesh = run(command(workdir, "--config.mesh.shape=(3,1,1)"))
    assert error_line(mesh).startswith("error: mesh shape (3, 1, 1) uses 3 devices but")


def as_unprivileged(cmd):
    """Root writes anywhere; drop that privilege (CAP_DAC_OVERRIDE) so permissions apply as for a user."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder unwritable")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]


def test_unwritable_checkpoint_folder_stops_before_any_work(tmp_path):
    workdir = str(tmp_path / "w")
    earlier_run(workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    os.chmod(ckpts, 0o555)
    try:
        result = run(as_unprivileged(command(workdir, "--config.train.steps=5")))
    finally:
        os.chmod(ckpts, 0o755)
    assert error_line(result) == (f"error: cannot write to {ckpts} (Permission denied): make it writable "
                                  f"(e.g. chmod -R u+w {ckpts}) or pass another --workdir")
    assert "compiled" not in result.stderr
    assert untouched(workdir)


def test_second_run_on_a_workdir_in_use_is_refused(tmp_path):
    workdir = str(tmp_path / "w")
    earlier_run(workdir)
    held = workdirlib.lock(workdir)   # this test process plays the first run
    try:
        result = run(command(workdir, "--config.train.steps=5"))
    finally:
        held.release()
    line = error_line(result)
    assert line.startswith(f"error: {workdir} is in use by another run (pid {os.getpid()} on ")
    assert line.endswith("): wait for it to finish or stop it, or pass another --workdir")
    assert untouched(workdir)


def test_lock_of_a_killed_run_does_not_block_the_rerun(tmp_path):
    workdir = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from rdance.train import workdir; held = workdir.lock(sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()", workdir],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(workdirlib.WorkdirError, match=f"in use by another run \\(pid {holder.pid} on "):
        workdirlib.lock(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    workdirlib.lock(workdir).release()   # the lock file is still there, but its flock died with the run
