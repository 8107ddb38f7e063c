"""The gcloud commands of a v5p-64 run, through a fake gcloud and through --dry-run, and the
arguments that must fail before any gcloud call."""
import shlex
import subprocess

import pytest

PROJECT, ZONE, NAME = "rdance-test", "us-east5-a", "rd-v5p"
SLICE = [f"--name={NAME}", f"--project={PROJECT}", f"--zone={ZONE}", "--accelerator=v5p-64"]
WHERE = [f"--zone={ZONE}", f"--project={PROJECT}"]
REPO_URL = "https://github.com/example/rdance.git"
ENTRY = ["rdance.run.train_toy", "--config=experiments/toy.py", "--workdir=gs://rdance-test/toy",
         "--config.train.steps=1000", "--config.mesh.shape=(1,-1,1)"]
SSH_ALL = ["compute", "tpus", "tpu-vm", "ssh", NAME, *WHERE, "--worker=all"]

# One v5p-64 job, start to end, as docs/tpu.md runs it.
V5P_64_RUN = [
    ("create", ["create", *SLICE, "--spot"]),
    ("bootstrap", ["bootstrap", *SLICE, f"--repo={REPO_URL}", "--ref=v0.1",
                   "--env=JAX_COMPILATION_CACHE_DIR=gs://rdance-test/jax_cache"]),
    ("run", ["run", *SLICE, "--", *ENTRY]),
    ("status", ["status", *SLICE, "--job=train_toy"]),
    ("logs", ["logs", *SLICE, "--job=train_toy", "--worker=all"]),
    ("fetch-logs", ["fetch-logs", *SLICE, "--job=train_toy", "--dest=fetched"]),
    ("stop", ["stop", *SLICE, "--job=train_toy"]),
    ("delete", ["delete", *SLICE]),
]


def script_of(call):
    assert call[:-1] == SSH_ALL and call[-1].startswith("--command="), call
    return call[len(call) - 1][len("--command="):]


def test_a_v5p_64_run_issues_these_gcloud_commands(gcloud, launch):
    gcloud.reply([(["tpu-vm describe"], [{"stdout": "READY\n"}])])
    calls = {}
    for name, args in V5P_64_RUN:
        gcloud.clear()
        result = launch(*args, env=gcloud.env)
        assert result.returncode == 0, (name, result.stderr)
        calls[name] = gcloud.calls()

    assert calls["create"] == [["compute", "tpus", "tpu-vm", "create", NAME, *WHERE,
                                "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--spot"]]

    [bootstrap] = calls["bootstrap"]
    lines = script_of(bootstrap).splitlines()
    assert f"repo={REPO_URL}; ref=v0.1" in lines
    assert '"$HOME/rdance-venv/bin/pip" install -q -e \'.[tpu]\' -c requirements.txt' in lines
    assert "export PYTHONUNBUFFERED=1" in lines
    assert "export JAX_COMPILATION_CACHE_DIR=gs://rdance-test/jax_cache" in lines

    # Eight workers, one process each: --distributed is added; the overrides pass through quoted.
    [run] = calls["run"]
    assert ('  "$HOME/rdance-venv/bin/python" -m rdance.run.train_toy --config=experiments/toy.py '
            "--workdir=gs://rdance-test/toy --config.train.steps=1000 '--config.mesh.shape=(1,-1,1)' "
            "--distributed &") in script_of(run).splitlines()
    assert ') > "$HOME/rdance_logs/train_toy.log" 2>&1 < /dev/null &' in script_of(run).splitlines()

    describe, status = calls["status"]
    assert describe == ["compute", "tpus", "tpu-vm", "describe", NAME, *WHERE, "--format=value(state)"]
    assert "rdance-job $j $(hostname): $s" in script_of(status)

    [logs] = calls["logs"]
    assert script_of(logs).startswith('tail -n +1 -F "$HOME/rdance_logs/train_toy.log"')

    assert calls["fetch-logs"] == [
        ["compute", "tpus", "tpu-vm", "scp", f"{NAME}:rdance_logs/train_toy.log",
         f"fetched/worker{i}.log", *WHERE, f"--worker={i}"] for i in range(8)]

    [stop] = calls["stop"]
    assert 'kill -TERM "$(cat "$p")"' in script_of(stop)

    assert calls["delete"] == [["compute", "tpus", "tpu-vm", "delete", NAME, *WHERE, "--quiet"]]


def test_queued_resource_commands(gcloud, launch):
    assert launch("create", *SLICE, "--queued", "--spot", "--runtime-version=v2-alpha-tpuv5-custom",
                  env=gcloud.env).returncode == 0
    assert launch("delete", *SLICE, "--queued", env=gcloud.env).returncode == 0
    gcloud.reply([(["describe"], [{"stdout": "ACTIVE\n"}])])
    assert launch("status", *SLICE, "--queued", "--job=train_toy", env=gcloud.env).returncode == 0
    create, delete, describe, _ = gcloud.calls()
    assert create == ["compute", "tpus", "queued-resources", "create", NAME, f"--node-id={NAME}", *WHERE,
                      "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5-custom", "--spot"]
    assert delete == ["compute", "tpus", "queued-resources", "delete", NAME, *WHERE, "--force", "--quiet"]
    assert describe == ["compute", "tpus", "queued-resources", "describe", NAME, *WHERE,
                        "--format=value(state.state)"]


def test_single_host_run_is_not_distributed_and_on_demand_has_no_spot(gcloud, launch):
    one_host = [f"--name={NAME}", f"--project={PROJECT}", "--zone=us-central2-b", "--accelerator=v4-8"]
    assert launch("create", *one_host, env=gcloud.env).returncode == 0
    assert launch("run", *one_host, "--job=toy", "--", "rdance.run.train_toy", "--config=experiments/toy.py",
                  "--workdir=/home/me/toy", env=gcloud.env).returncode == 0
    create, run = gcloud.calls()
    assert create[-2:] == ["--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]
    assert ('  "$HOME/rdance-venv/bin/python" -m rdance.run.train_toy --config=experiments/toy.py '
            "--workdir=/home/me/toy &") in run[-1].splitlines()
    assert 'echo $? > "$HOME/rdance_logs/toy.exit"' in run[-1]


@pytest.mark.parametrize("name,args", V5P_64_RUN + [
    ("keep-running", ["keep-running", *SLICE, "--spot", f"--repo={REPO_URL}", "--", *ENTRY])])
def test_dry_run_prints_the_commands_it_would_run(gcloud, launch, tmp_path, name, args):
    """--dry-run calls nothing; its output, run by bash, makes exactly the calls the command makes."""
    dry = launch(args[0], "--dry-run", *args[1:], env=gcloud.env)
    assert dry.returncode == 0, dry.stderr
    assert gcloud.calls() == [], "--dry-run called gcloud"
    assert dry.stdout.count("gcloud compute tpus ") >= 1
    subprocess.run(["bash", "-c", dry.stdout], env=gcloud.env, cwd=tmp_path, check=True)
    printed = gcloud.calls()
    if name == "keep-running":  # the loop's commands, once each
        kinds = [c[2:4] for c in printed]
        assert kinds == [["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "delete"],
                         ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]
        assert "rdance-job" in printed[3][-1] and "install -q -e '.[tpu]'" in printed[4][-1]
        assert "-m rdance.run.train_toy" in printed[5][-1] and "kill -TERM" in printed[6][-1]
        return
    gcloud.clear()
    if name == "status":  # status only reads the job once the slice answers READY
        gcloud.reply([(["describe"], [{"stdout": "READY\n"}])])
    assert launch(*args, env=gcloud.env).returncode == 0
    assert printed == gcloud.calls()


def test_fit_check_runs_rdance_fit_check_for_the_slice_topology(launch, gcloud):
    result = launch("fit-check", "--accelerator=v5p-64", "--dry-run", "--", *ENTRY, env=gcloud.env)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[1:] == [
        "-m", "rdance.run.fit_check", "--entry=rdance.run.train_toy", "--topology=v5p:2x4x4",
        "--config=experiments/toy.py", "--config.train.steps=1000", "--config.mesh.shape=(1,-1,1)"]


BAD = [
    (["create", *SLICE[:3], "--accelerator=v5p-63"],
     "unknown accelerator type 'v5p-63': the v5p slices this launcher knows (the default shapes) "
     "are v5p-8, v5p-16, v5p-32, v5p-64"),
    (["create", *SLICE[:3], "--accelerator=v5e-16"],
     "gcloud spells TPU v5e 'v5litepod', e.g. --accelerator=v5litepod-16"),
    (["create", *SLICE[:3], "--accelerator=v7x-8"],
     "unknown accelerator type 'v7x-8': use one of v4, v5litepod, v5p, v6e"),
    (["create", *SLICE[:3]], "--accelerator is missing: pass the slice type"),
    (["create", f"--name={NAME}", f"--project={PROJECT}", "--accelerator=v5p-64"],
     "--zone is missing: pass the zone that has your TPUs, e.g. --zone=us-east5-a"),
    (["create", f"--name={NAME}", f"--zone={ZONE}", "--accelerator=v5p-64"],
     "--project is missing: pass --project=YOUR_PROJECT_ID"),
    (["create", *SLICE, "--zone=us-east5"], "--zone='us-east5' is not a zone"),
    (["create", *SLICE, "--name=Rd_1"], "--name='Rd_1' is not a valid TPU name"),
    (["bootstrap", *SLICE], "--repo is missing: pass the URL the workers clone"),
    (["bootstrap", *SLICE, f"--repo={REPO_URL}", "--env=2X=1"], "--env='2X=1': expected KEY=VALUE"),
    (["run", *SLICE], "name the entrypoint and its flags after '--'"),
    (["run", *SLICE, "--", "rdance.train_toi", "--config=experiments/toy.py"],
     "entrypoint rdance.train_toi not found"),
    (["run", *SLICE, "--", "rdance.run.train_toy", "--config=experiments/nope.py"],
     "--config=experiments/nope.py: experiments/nope.py does not exist"),
    (["run", *SLICE, "--", "rdance.run.train_toy", "--config=experiments/toy.py", "--workdir=/tmp/toy"],
     "--workdir=/tmp/toy: the 8 workers of a v5p-64 must share it; use a bucket"),
    (["run", *SLICE, "--", *ENTRY, "--process_id=0"], "--process_id is for CPU processes"),
    (["keep-running", *SLICE[:3], "--accelerator=v5p-8", f"--repo={REPO_URL}", "--",
      "rdance.run.train_toy", "--config=experiments/toy.py", "--workdir=/tmp/toy"],
     "--workdir=/tmp/toy: a preempted VM's disk is lost with it"),
    (["logs", *SLICE, "--job=train_toy", "--worker=8"], "--worker=8: a v5p-64 has workers 0..7"),
    (["status", *SLICE], "--job is missing"),
    (["delete", *SLICE, "--", "rdance.run.train_toy"], "delete takes no entrypoint"),
    (["run", *SLICE, "--", *ENTRY, "--dry-run"], "--dry-run after '--' would go to the entrypoint"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a[:1] + [m[:30]]) for a, m in BAD])
def test_bad_arguments_fail_before_any_gcloud_call(gcloud, launch, args, message):
    result = launch(*args, env=gcloud.env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert gcloud.calls() == []


def test_missing_gcloud_is_named(launch, tmp_path):
    result = launch("delete", *SLICE, env={"PATH": str(tmp_path)})
    assert result.returncode == 2
    assert "error: gcloud is not on PATH: install the Google Cloud CLI" in result.stderr
