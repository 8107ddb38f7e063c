#!/usr/bin/env python3
"""Run rdance on Cloud TPU VMs: create a slice (one host or a pod slice; spot or on-demand; directly
or as a queued resource), bootstrap every worker, run an entrypoint on all workers, follow and fetch
its logs, stop it, tear the slice down, and keep a spot job going across preemptions.

    python launch/tpu.py create       SLICE [--spot] [--runtime-version=VERSION]
    python launch/tpu.py bootstrap    SLICE --repo=URL [--ref=main] [--env=KEY=VALUE ...]
    python launch/tpu.py run          SLICE [--job=NAME] -- rdance.run.train_toy --config=experiments/toy.py \
                                            --workdir=gs://BUCKET/run [--config.a.b=VALUE ...]
    python launch/tpu.py status       SLICE [--job=NAME]
    python launch/tpu.py logs         SLICE [--job=NAME] [--worker=0|all]
    python launch/tpu.py fetch-logs   SLICE [--job=NAME] [--dest=DIR]
    python launch/tpu.py stop         SLICE [--job=NAME]
    python launch/tpu.py delete       SLICE
    python launch/tpu.py keep-running SLICE [--spot] --repo=URL [--ref=main] -- ENTRYPOINT FLAGS...
    python launch/tpu.py fit-check    --accelerator=v5p-64 -- ENTRYPOINT FLAGS...

SLICE is ``--name=NAME --project=PROJECT --zone=ZONE --accelerator=TYPE [--queued]``. Every command
takes ``--dry-run``, which prints the gcloud commands instead of running them, and every argument
is checked before the first gcloud call. docs/tpu.md walks through a whole run.

On each worker: the repository in ~/rdance, a venv in ~/rdance-venv, the job environment in
~/rdance.env, and per job ~/rdance_logs/JOB.log (stdout and stderr), JOB.pid and JOB.exit.

Standard library only, so it runs wherever gcloud does.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LOGS = "$HOME/rdance_logs"
# The exit status of an rdance entrypoint that SIGTERM (a preemption, or `stop`) made checkpoint
# and stop before its last step (EX_TEMPFAIL: rerun to resume); `status` reports such a job as
# "preempted", which keep-running starts again. The same as rdance.core.status.EXIT_PREEMPTED:
# this script uses the standard library only, so it repeats the value (a test keeps them equal).
PREEMPTED_EXIT = 75
# A pod worker finds its peers itself; these flags are for CPU processes only.
CPU_ONLY_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


class LaunchError(Exception):
    """A bad argument: the message names the problem and the fix."""


# ----------------------------------------------------------------------------- accelerator types

@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str       # as gcloud spells it, e.g. v5p-64
    chips: int
    workers: int    # TPU VMs in the slice, one rdance process on each
    topology: str   # the same slice for rdance.run.fit_check, e.g. v5p:2x4x4
    runtime: str    # default --runtime-version


def _accelerator_table() -> dict[str, Accelerator]:
    """The default slice shapes of the generations rdance.run.fit_check knows (v4, v5p, v5e, v6e).

    v4 and v5p count TensorCores (2 per chip) in their names and have 4 chips per VM; v5e
    (spelled v5litepod) and v6e count chips, with one VM up to 8 chips and 4 chips per VM above.
    """
    cube = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
    grid = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
    table = {}
    for prefix, fit_name, runtime, max_chips in (("v4", "v4", "tpu-ubuntu2204-base", 2048),
                                                  ("v5p", "v5p", "v2-alpha-tpuv5", 4096)):
        for chips, shape in cube.items():
            if chips <= max_chips:
                name = f"{prefix}-{2 * chips}"
                table[name] = Accelerator(name, chips, chips // 4, f"{fit_name}:{shape}", runtime)
    for prefix, fit_name, runtime in (("v5litepod", "v5e", "v2-alpha-tpuv5-lite"),
                                      ("v6e", "v6e", "v2-alpha-tpuv6e")):
        for chips, shape in grid.items():
            name = f"{prefix}-{chips}"
            table[name] = Accelerator(name, chips, 1 if chips <= 8 else chips // 4,
                                      f"{fit_name}:{shape}", runtime)
    return table


ACCELERATORS = _accelerator_table()


def accelerator(name: str | None) -> Accelerator:
    if not name:
        raise LaunchError("--accelerator is missing: pass the slice type, e.g. --accelerator=v5p-64 "
                          f"(known prefixes: {', '.join(_prefixes())})")
    if name in ACCELERATORS:
        return ACCELERATORS[name]
    prefix = name.rsplit("-", 1)[0]
    if prefix == "v5e":
        raise LaunchError(f"unknown accelerator type {name!r}: gcloud spells TPU v5e 'v5litepod', "
                          f"e.g. --accelerator={name.replace('v5e', 'v5litepod', 1)}")
    same = [a for a in ACCELERATORS if a.rsplit("-", 1)[0] == prefix]
    if same:
        raise LaunchError(f"unknown accelerator type {name!r}: the {prefix} slices this launcher "
                          f"knows (the default shapes) are {', '.join(same)}")
    raise LaunchError(f"unknown accelerator type {name!r}: use one of {', '.join(_prefixes())} "
                      "followed by a size, e.g. v5p-64, v5litepod-16, v4-8, v6e-8")


def _prefixes() -> list[str]:
    return sorted({a.rsplit("-", 1)[0] for a in ACCELERATORS})


# ----------------------------------------------------------------------------- the slice

@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    project: str
    zone: str
    accelerator: Accelerator
    queued: bool

    def where(self) -> list[str]:
        return [f"--zone={self.zone}", f"--project={self.project}"]


def make_slice(ns: argparse.Namespace) -> Slice:
    if not ns.project:
        raise LaunchError("--project is missing: pass --project=YOUR_PROJECT_ID "
                          "(`gcloud projects list` shows yours)")
    if not re.fullmatch(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]", ns.project):
        raise LaunchError(f"--project={ns.project!r} is not a project ID: 6 to 30 lowercase letters, "
                          "digits and hyphens, starting with a letter (`gcloud projects list`)")
    if not ns.zone:
        raise LaunchError("--zone is missing: pass the zone that has your TPUs, e.g. --zone=us-east5-a "
                          "(`gcloud compute tpus locations list` lists them)")
    if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+-[a-z]", ns.zone):
        raise LaunchError(f"--zone={ns.zone!r} is not a zone: expected e.g. us-east5-a or "
                          "europe-west4-b, a region followed by a letter")
    if not ns.name:
        raise LaunchError("--name is missing: pass the TPU's name, e.g. --name=rdance-v5p")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", ns.name):
        raise LaunchError(f"--name={ns.name!r} is not a valid TPU name: lowercase letters, digits and "
                          "hyphens, starting with a letter, at most 63 characters")
    return Slice(ns.name, ns.project, ns.zone, accelerator(ns.accelerator), ns.queued)


def check_job(job: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", job):
        raise LaunchError(f"--job={job!r}: use letters, digits, '_', '.' and '-' (it names files)")
    return job


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env={pair!r}: expected KEY=VALUE with KEY a shell variable name, "
                              "e.g. --env=JAX_COMPILATION_CACHE_DIR=gs://BUCKET/jax_cache")
        if "\n" in value:
            raise LaunchError(f"--env={key}=...: the value must be one line")
        env[key] = value
    return env


# ----------------------------------------------------------------------------- the entrypoint

@dataclasses.dataclass(frozen=True)
class Entry:
    module: str
    flags: tuple[str, ...]

    @property
    def workdir(self) -> str | None:
        return flag_value(self.flags, "--workdir")


def flag_value(flags, name: str) -> str | None:
    for i, arg in enumerate(flags):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(flags):
            return flags[i + 1]
    return None


def parse_entry(tokens: list[str], acc: Accelerator, *, shared_workdir: bool = False) -> Entry:
    """Check the entrypoint and its flags against this checkout; add --distributed on pods."""
    example = "-- rdance.run.train_toy --config=experiments/toy.py --workdir=gs://BUCKET/run"
    if not tokens:
        raise LaunchError(f"name the entrypoint and its flags after '--', e.g. {example}")
    module, flags = tokens[0], list(tokens[1:])
    if not re.fullmatch(r"rdance(\.[A-Za-z_]\w*)+", module):
        raise LaunchError(f"{module!r} is not an rdance entrypoint module: expected e.g. {example}")
    relative = pathlib.Path(*module.split("."))
    if not ((REPO_ROOT / relative).with_suffix(".py").is_file()
            or (REPO_ROOT / relative / "__main__.py").is_file()):
        found = sorted(f"rdance.{p.stem}" for p in (REPO_ROOT / "rdance").glob("*.py")
                       if "app.run(" in p.read_text())
        raise LaunchError(f"entrypoint {module} not found ({relative}.py does not exist in "
                          f"{REPO_ROOT}); entrypoints here: {', '.join(found)}")
    for arg in flags:
        if arg == "--dry-run":
            raise LaunchError("--dry-run after '--' would go to the entrypoint: put it before '--'")
        if not arg.startswith("-"):
            raise LaunchError(f"{arg!r}: entrypoint arguments are flags (--name=value); quote values "
                              'that hold spaces, e.g. --config.mesh.shape="(1, -1, 1)"')
    config = flag_value(flags, "--config")
    if config is None:
        raise LaunchError(f"{module} needs --config=experiments/NAME.py")
    if not (REPO_ROOT / config.split(":")[0]).is_file():
        raise LaunchError(f"--config={config}: {config.split(':')[0]} does not exist in {REPO_ROOT} "
                          "(workers run from the repository root, so give a path inside it)")
    for name in CPU_ONLY_FLAGS:
        if flag_value(flags, name) is not None:
            raise LaunchError(f"{name} is for CPU processes: on a TPU slice --distributed finds the "
                              "coordinator and the process count by itself; drop the flag")
    workdir = flag_value(flags, "--workdir")
    if workdir is not None and (acc.workers > 1 or shared_workdir) and not workdir.startswith("gs://"):
        why = (f"the {acc.workers} workers of a {acc.name} must share it" if acc.workers > 1
               else "a preempted VM's disk is lost with it")
        raise LaunchError(f"--workdir={workdir}: {why}; use a bucket, e.g. --workdir=gs://BUCKET/run")
    if acc.workers > 1 and "--distributed" not in flags:
        flags.append("--distributed")
    return Entry(module, tuple(flags))


# ----------------------------------------------------------------------------- gcloud commands

def create_command(s: Slice, runtime: str, spot: bool) -> list[str]:
    if s.queued:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", s.name,
               f"--node-id={s.name}", *s.where(), f"--accelerator-type={s.accelerator.name}",
               f"--runtime-version={runtime}"]
    else:
        cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", s.name, *s.where(),
               f"--accelerator-type={s.accelerator.name}", f"--version={runtime}"]
    return cmd + (["--spot"] if spot else [])


def describe_command(s: Slice) -> list[str]:
    if s.queued:
        return ["gcloud", "compute", "tpus", "queued-resources", "describe", s.name, *s.where(),
                "--format=value(state.state)"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "describe", s.name, *s.where(),
            "--format=value(state)"]


def delete_command(s: Slice) -> list[str]:
    if s.queued:  # --force deletes the TPU VM with its queued resource
        return ["gcloud", "compute", "tpus", "queued-resources", "delete", s.name, *s.where(),
                "--force", "--quiet"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", s.name, *s.where(), "--quiet"]


def ssh_command(s: Slice, script: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", s.name, *s.where(),
            f"--worker={worker}", f"--command={script.rstrip()}"]


def scp_log_commands(s: Slice, job: str, dest: pathlib.Path) -> list[list[str]]:
    return [["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{s.name}:rdance_logs/{job}.log",
             str(dest / f"worker{i}.log"), *s.where(), f"--worker={i}"]
            for i in range(s.accelerator.workers)]


# ----------------------------------------------------------------------------- worker scripts

def env_file_script(env: dict[str, str]) -> str:
    """Writes ~/rdance.env, which every run sources: the job environment of this worker."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in {"PYTHONUNBUFFERED": "1", **env}.items()]
    return "cat > \"$HOME/rdance.env\" <<'RDANCE_ENV'\n" + "\n".join(lines) + "\nRDANCE_ENV\n"


def bootstrap_script(repo: str, ref: str, env: dict[str, str]) -> str:
    """Idempotent: clone or update ~/rdance at REF, make ~/rdance-venv, pip install, write the env."""
    apt = ("sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq")
    return f"""set -euo pipefail
repo={shlex.quote(repo)}; ref={shlex.quote(ref)}
# rdance needs Python >= 3.11 with venv; older images get python3.11 from the distribution.
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then py=python3
else py=python3.11; fi
if ! "$py" -c 'import ensurepip' 2>/dev/null; then {apt} update && {apt} install -y "$py" "$py-venv"; fi
if [ ! -d "$HOME/rdance/.git" ]; then git clone -q "$repo" "$HOME/rdance"; fi
cd "$HOME/rdance"
git remote set-url origin "$repo"
git fetch -q --force --tags origin '+refs/heads/*:refs/remotes/origin/*'
if git rev-parse -q --verify "refs/remotes/origin/$ref^{{commit}}" >/dev/null; then target="origin/$ref"
else target="$ref"; git cat-file -e "$ref^{{commit}}" 2>/dev/null || git fetch -q origin "$ref"; fi
git checkout -q --detach "$target"
if [ ! -x "$HOME/rdance-venv/bin/python" ]; then "$py" -m venv "$HOME/rdance-venv"; fi
"$HOME/rdance-venv/bin/pip" install -q --upgrade pip
"$HOME/rdance-venv/bin/pip" install -q -e '.[tpu]' -c requirements.txt
{env_file_script(env)}jax=$("$HOME/rdance-venv/bin/python" -c 'import jax; print("jax", jax.__version__)')
echo "bootstrapped $(hostname): rdance $(git rev-parse --short HEAD), $jax"
"""


def run_script(job: str, entry: Entry) -> str:
    """Start ENTRY in the background on this worker, immune to the ssh session ending (SIGHUP
    ignored), logging to JOB.log; its pid goes to JOB.pid and, when it ends, its status to JOB.exit."""
    log = f"{LOGS}/{job}"
    return f"""set -euo pipefail
if [ ! -x "$HOME/rdance-venv/bin/python" ] || [ ! -f "$HOME/rdance.env" ]; then
  echo "error: $(hostname) is not bootstrapped: run python launch/tpu.py bootstrap first" >&2; exit 1; fi
. "$HOME/rdance.env"
cd "$HOME/rdance"
mkdir -p "{LOGS}"
if [ -f "{log}.pid" ] && kill -0 "$(cat "{log}.pid")" 2>/dev/null; then
  echo "error: job {job} is already running on $(hostname): stop it first (launch/tpu.py stop)" >&2
  exit 1; fi
if [ -f "{log}.log" ]; then mv "{log}.log" "{log}.log.$(date +%Y%m%d-%H%M%S)"; fi
rm -f "{log}.pid" "{log}.exit"
(
  set +e; trap '' HUP
  "$HOME/rdance-venv/bin/python" {shlex.join(["-m", entry.module, *entry.flags])} &
  echo $! > "{log}.pid"
  wait $!
  echo $? > "{log}.exit"
) > "{log}.log" 2>&1 < /dev/null &
echo "started {job} on $(hostname): ~/rdance_logs/{job}.log"
"""


def status_script(job: str) -> str:
    """One line per worker: 'rdance-job JOB HOST: running|exited N|preempted|not started|vanished'."""
    return f"""d="{LOGS}"; j={job}
alive() {{ [ -f "$d/$j.pid" ] && kill -0 "$(cat "$d/$j.pid")" 2>/dev/null; }}
if ! [ -f "$d/$j.exit" ] && ! alive && [ -f "$d/$j.pid" ]; then sleep 2; fi
if [ -f "$d/$j.exit" ]; then code=$(cat "$d/$j.exit")
  if [ "$code" = {PREEMPTED_EXIT} ]; then s=preempted
  else s="exited $code"; fi
elif alive; then s=running
elif [ -f "$d/$j.pid" ]; then s=vanished
else s="not started"; fi
echo "rdance-job $j $(hostname): $s"
"""


def stop_script(job: str) -> str:
    return f"""p="{LOGS}/{job}.pid"
if [ -f "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null; then kill -TERM "$(cat "$p")"
  echo "{job} on $(hostname): SIGTERM sent; it checkpoints at the next step and exits"
else echo "{job} on $(hostname): not running"; fi
"""


def logs_script(job: str, worker: str) -> str:
    tail = f'tail -n +1 -F "{LOGS}/{job}.log"'
    return tail + (' | sed -u "s/^/[$(hostname)] /"' if worker == "all" else "")


# ----------------------------------------------------------------------------- running gcloud

def shell_line(cmd: list[str]) -> str:
    """The command as bash reads it; a multi-line worker script is shown verbatim in a heredoc."""
    words = []
    for arg in cmd:
        if arg.startswith("--command=") and "\n" in arg and "\nRDANCE_SCRIPT\n" not in arg:
            words.append(f'--command="$(cat <<\'RDANCE_SCRIPT\'\n{arg[len("--command="):].rstrip()}'
                         '\nRDANCE_SCRIPT\n)"')
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


class Gcloud:
    """Runs gcloud commands (echoing them to stderr), or with dry_run prints them to stdout."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def __call__(self, cmd: list[str], *, capture: bool = False, echo: bool = True,
                 timeout: float | None = None) -> subprocess.CompletedProcess:
        if self.dry_run:
            print(shell_line(cmd), flush=True)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if shutil.which(cmd[0]) is None:
            raise LaunchError(f"{cmd[0]} is not on PATH: install the Google Cloud CLI "
                              "(https://cloud.google.com/sdk/docs/install), or add --dry-run")
        if echo:
            print("+ " + shell_line(cmd), file=sys.stderr, flush=True)
        try:
            return subprocess.run(cmd, text=True, capture_output=capture, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout} s")


def must(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        raise SystemExit(result.returncode)


# ----------------------------------------------------------------------------- state queries

READY_STATES = {"READY", "ACTIVE"}
# Spot TPUs cannot restart: these are deleted and created again.
RECREATE_STATES = {"PREEMPTED", "TERMINATED", "STOPPED", "SUSPENDED", "FAILED"}


def slice_state(gcloud: Gcloud, s: Slice) -> str | None:
    """READY/ACTIVE/PREEMPTED/..., or None when the slice does not exist."""
    result = gcloud(describe_command(s), capture=True, echo=False, timeout=300)
    if result.returncode == 0:
        return result.stdout.strip() or "UNKNOWN"
    if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
        return None
    last = (result.stderr.strip().splitlines() or ["no message"])[-1]
    return f"UNREACHABLE (gcloud: {last})"


@dataclasses.dataclass
class WorkerJob:
    host: str
    state: str  # running | exited N | preempted | not started | vanished

    @property
    def exit_code(self) -> int | None:
        return int(self.state.split()[1]) if self.state.startswith("exited ") else None


def job_states(gcloud: Gcloud, s: Slice, job: str) -> list[WorkerJob] | None:
    """The job's state on every worker, or None when not every worker answered."""
    result = gcloud(ssh_command(s, status_script(job)), capture=True, echo=False, timeout=300)
    jobs = [WorkerJob(*m.groups()) for m in re.finditer(
        rf"^rdance-job {re.escape(job)} (\S+): (running|exited -?\d+|preempted|not started|vanished)$",
        result.stdout, re.MULTILINE)]
    return jobs if len(jobs) == s.accelerator.workers else None


# ----------------------------------------------------------------------------- commands

def cmd_create(ns, gcloud: Gcloud) -> int:
    s = make_slice(ns)
    must(gcloud(create_command(s, ns.runtime_version or s.accelerator.runtime, ns.spot)))
    return 0


def cmd_bootstrap(ns, gcloud: Gcloud) -> int:
    s, env = make_slice(ns), parse_env(ns.env)
    check_repo(ns.repo, ns.ref)
    must(gcloud(ssh_command(s, bootstrap_script(ns.repo, ns.ref, env))))
    return 0


def check_repo(repo: str | None, ref: str) -> None:
    if not repo:
        raise LaunchError("--repo is missing: pass the URL the workers clone, e.g. "
                          "--repo=https://github.com/OWNER/rdance.git")
    if not re.fullmatch(r"[A-Za-z0-9._/+-]+", ref) or ref.startswith("-"):
        raise LaunchError(f"--ref={ref!r}: expected a branch, tag or commit, e.g. --ref=main")


def cmd_run(ns, gcloud: Gcloud) -> int:
    s = make_slice(ns)
    entry = parse_entry(ns.entry, s.accelerator)
    must(gcloud(ssh_command(s, run_script(job_name(ns, entry), entry))))
    return 0


def job_name(ns, entry: Entry | None = None) -> str:
    if ns.job:
        return check_job(ns.job)
    if entry is None:
        raise LaunchError("--job is missing: pass the job's name (run named it after its "
                          "entrypoint, e.g. --job=train_toy)")
    return entry.module.rsplit(".", 1)[1]


def cmd_status(ns, gcloud: Gcloud) -> int:
    s, job = make_slice(ns), job_name(ns)
    if gcloud.dry_run:
        gcloud(describe_command(s))
        gcloud(ssh_command(s, status_script(job)))
        return 0
    state = slice_state(gcloud, s)
    print(f"{s.name}: {state or 'does not exist'}")
    if state in READY_STATES:
        jobs = job_states(gcloud, s, job)
        for w in jobs or []:
            print(f"  {w.host}: {job} {w.state}")
        if jobs is None:
            print("  not every worker answered; try again")
    return 0


def cmd_logs(ns, gcloud: Gcloud) -> int:
    s, job = make_slice(ns), job_name(ns)
    if ns.worker != "all" and not (ns.worker.isdigit() and int(ns.worker) < s.accelerator.workers):
        raise LaunchError(f"--worker={ns.worker}: a {s.accelerator.name} has workers "
                          f"0..{s.accelerator.workers - 1}; or pass --worker=all")
    must(gcloud(ssh_command(s, logs_script(job, ns.worker), worker=ns.worker)))
    return 0


def cmd_fetch_logs(ns, gcloud: Gcloud) -> int:
    s, job = make_slice(ns), job_name(ns)
    dest = pathlib.Path(ns.dest or f"logs/{s.name}/{job}")
    if not gcloud.dry_run:
        dest.mkdir(parents=True, exist_ok=True)
    failed = [cmd for cmd in scp_log_commands(s, job, dest) if gcloud(cmd).returncode != 0]
    if failed:
        print(f"error: {len(failed)} of {s.accelerator.workers} logs were not fetched", file=sys.stderr)
        return 1
    if not gcloud.dry_run:
        print(f"logs of {job} in {dest}/worker*.log")
    return 0


def cmd_stop(ns, gcloud: Gcloud) -> int:
    s, job = make_slice(ns), job_name(ns)
    must(gcloud(ssh_command(s, stop_script(job))))
    return 0


def cmd_delete(ns, gcloud: Gcloud) -> int:
    must(gcloud(delete_command(make_slice(ns))))
    return 0


def cmd_fit_check(ns, gcloud: Gcloud) -> int:
    """Compile the job's train step for the slice's topology on this machine (no TPU, no gcloud)."""
    acc = accelerator(ns.accelerator)
    if acc.chips == 1:
        raise LaunchError(f"libtpu cannot describe a 1-chip topology ({acc.topology}), so there is no "
                          f"fit check for {acc.name}; check {acc.name[:-1]}4 instead")
    entry = parse_entry(ns.entry, acc)
    flags, skip = [], False
    for arg in entry.flags:  # the fit check takes the job's config and overrides, nothing else
        if skip:
            skip = False
        elif arg == "--workdir":
            skip = True
        elif arg != "--distributed" and not arg.startswith("--workdir="):
            flags.append(arg)
    cmd = [sys.executable, "-m", "rdance.run.fit_check", f"--entry={entry.module}",
           f"--topology={acc.topology}", *flags]
    if gcloud.dry_run:
        print(shlex.join(cmd))
        return 0
    return subprocess.run(cmd, cwd=REPO_ROOT).returncode


def cmd_keep_running(ns, gcloud: Gcloud) -> int:
    """Keep ENTRY running until it finishes: recreate the slice after a preemption, bootstrap it
    and start the job again, which resumes from the last checkpoint in its (gs://) workdir.

    Each round reads the slice's state and the job's state on every worker:
      slice missing                     create it (queued: wait until ACTIVE)
      PREEMPTED/SUSPENDED/...           delete it, then create it again
      job running anywhere              wait --poll-seconds
      job exited 0 on every worker      done: exit 0
      job exited non-zero (slice fine)  stop it everywhere and exit with that status
      otherwise (fresh slice, preempted by SIGTERM, never started, or it ended before this loop
      began)                            bootstrap and run
    """
    s, env = make_slice(ns), parse_env(ns.env)
    check_repo(ns.repo, ns.ref)
    entry = parse_entry(ns.entry, s.accelerator, shared_workdir=True)
    if entry.workdir is None:
        raise LaunchError("keep-running needs --workdir=gs://BUCKET/run: a relaunch resumes from it")
    job = job_name(ns, entry)
    create = create_command(s, ns.runtime_version or s.accelerator.runtime, ns.spot)
    bootstrap = ssh_command(s, bootstrap_script(ns.repo, ns.ref, env))
    run = ssh_command(s, run_script(job, entry))
    if gcloud.dry_run:
        print(f"# keep-running {job} on {s.name}: every {ns.poll_seconds:g} s, read the slice state")
        gcloud(describe_command(s))
        print("# missing: create it; PREEMPTED, SUSPENDED, STOPPED, TERMINATED, FAILED: delete it first")
        gcloud(create)
        gcloud(delete_command(s))
        print("# READY/ACTIVE: read the job on every worker")
        gcloud(ssh_command(s, status_script(job)))
        print("# not running anywhere and not finished: bootstrap and start it (it resumes from its workdir)")
        gcloud(bootstrap)
        gcloud(run)
        print("# exited non-zero on a healthy slice: stop it everywhere, exit with its status")
        gcloud(ssh_command(s, stop_script(job)))
        return 0
    try:
        return _keep_running(ns, s, job, gcloud, create, bootstrap, run)
    except KeyboardInterrupt:
        print(f"\nkeep-running interrupted; {job} goes on where it runs (stop it with: "
              f"python launch/tpu.py stop ... --job={job})", file=sys.stderr)
        return 130


def _keep_running(ns, s: Slice, job: str, gcloud: Gcloud, create, bootstrap, run) -> int:
    def say(message: str) -> None:
        print(f"[keep-running {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    starts, ours = 0, False
    while True:
        state = slice_state(gcloud, s)
        if state is None:
            say(f"{s.name} does not exist: creating it")
            if gcloud(create).returncode != 0:
                time.sleep(ns.poll_seconds)
            continue
        if state in RECREATE_STATES:
            say(f"{s.name} is {state}: deleting it to create it again")
            gcloud(delete_command(s))
            time.sleep(ns.poll_seconds)
            continue
        if state not in READY_STATES:
            say(f"{s.name} is {state}: waiting")
            time.sleep(ns.poll_seconds)
            continue
        jobs = job_states(gcloud, s, job)
        if jobs is None:
            say("not every worker answered: asking again")
            time.sleep(ns.poll_seconds)
            continue
        running = any(w.state == "running" for w in jobs)
        # Exit statuses count once this loop has started the job or seen it run: one left over
        # from an earlier run (finished, or failed before a fix) is started again, and resumes.
        ours = ours or running
        failed = [w for w in jobs if w.exit_code not in (None, 0)]
        if ours and failed:
            time.sleep(ns.poll_seconds)  # a slice being preempted can kill a job before its state flips
            if slice_state(gcloud, s) not in READY_STATES:
                continue
            say(f"{job} failed on {', '.join(f'{w.host} ({w.state})' for w in failed)}; stopping it. "
                f"Read why with: python launch/tpu.py fetch-logs ... --job={job}")
            gcloud(ssh_command(s, stop_script(job)))
            return failed[0].exit_code
        if ours and all(w.exit_code == 0 for w in jobs):
            say(f"{job} finished on all {len(jobs)} workers ({starts} start(s) by this loop)")
            return 0
        if running:
            time.sleep(ns.poll_seconds)
            continue
        starts, ours = starts + 1, True
        say(f"{job} is not running ({', '.join(sorted({w.state for w in jobs}))}): "
            f"bootstrapping and starting it (start {starts})")
        for step in (bootstrap, run):
            code = gcloud(step).returncode
            if code != 0:
                break
        time.sleep(ns.poll_seconds)
        if code != 0 and slice_state(gcloud, s) in READY_STATES:
            say(f"{'bootstrap' if step is bootstrap else 'starting the job'} failed on a healthy "
                f"slice (gcloud exit status {code}); see its output above")
            return code


COMMANDS = {
    "create": (cmd_create, "create the TPU VM or queued resource"),
    "bootstrap": (cmd_bootstrap, "install rdance at a git ref on every worker (idempotent)"),
    "run": (cmd_run, "start an entrypoint on every worker, in the background"),
    "status": (cmd_status, "the slice's state and the job's state on every worker"),
    "logs": (cmd_logs, "stream a worker's log (or all of them)"),
    "fetch-logs": (cmd_fetch_logs, "copy every worker's log here"),
    "stop": (cmd_stop, "SIGTERM the job everywhere: it checkpoints and exits"),
    "delete": (cmd_delete, "tear the slice down"),
    "keep-running": (cmd_keep_running, "create, bootstrap, run, and relaunch after preemptions"),
    "fit-check": (cmd_fit_check, "compile the job for the slice's topology on this machine"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dry-run", action="store_true", help="print the gcloud commands only")
    slice_ = argparse.ArgumentParser(add_help=False)
    slice_.add_argument("--name", help="the TPU's name (and its queued resource's)")
    slice_.add_argument("--project", help="Google Cloud project ID")
    slice_.add_argument("--zone", help="e.g. us-east5-a")
    slice_.add_argument("--accelerator", help="accelerator type, e.g. v5p-64, v5litepod-16, v4-8, v6e-8")
    slice_.add_argument("--queued", action="store_true", help="the slice is a queued resource")
    create = argparse.ArgumentParser(add_help=False)
    create.add_argument("--spot", action="store_true", help="spot capacity (default: on-demand)")
    create.add_argument("--runtime-version", help="TPU software version (default: per generation)")
    bootstrap = argparse.ArgumentParser(add_help=False)
    bootstrap.add_argument("--repo", help="git URL the workers clone rdance from")
    bootstrap.add_argument("--ref", default="main", help="branch, tag or commit (default: main)")
    bootstrap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                           help="environment of every run on the workers (repeatable)")
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--job", help="job name, which names its log (default: the entrypoint's name)")

    parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Arguments after '--' are the entrypoint and its flags.")
    sub = parser.add_subparsers(dest="command", required=True)
    parents = {
        "create": [slice_, create], "bootstrap": [slice_, bootstrap], "run": [slice_, job],
        "status": [slice_, job], "logs": [slice_, job], "fetch-logs": [slice_, job],
        "stop": [slice_, job], "delete": [slice_], "keep-running": [slice_, create, bootstrap, job],
        "fit-check": [],
    }
    for name, (_, help_) in COMMANDS.items():
        entry = ("after the options: -- rdance.MODULE --config=experiments/NAME.py "
                 "--workdir=gs://BUCKET/run [--config.KEY=VALUE ...]")
        p = sub.add_parser(name, parents=[common, *parents[name]], help=help_, description=help_,
                           epilog=entry if name in ("run", "keep-running", "fit-check") else None)
        if name == "logs":
            p.add_argument("--worker", default="0", help="worker index, or all (default: 0)")
        if name == "fetch-logs":
            p.add_argument("--dest", help="local folder (default: logs/NAME/JOB)")
        if name == "keep-running":
            p.add_argument("--poll-seconds", type=float, default=60.0,
                           help="seconds between checks (default: 60)")
        if name == "fit-check":
            p.add_argument("--accelerator", help="accelerator type, e.g. v5p-64")
    return parser


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        argv, entry = argv[:split], argv[split + 1:]
    else:
        entry = None
    ns = build_parser().parse_args(argv)
    takes_entry = ns.command in ("run", "keep-running", "fit-check")
    try:
        if entry is not None and not takes_entry:
            raise LaunchError(f"{ns.command} takes no entrypoint: drop everything after '--'")
        ns.entry = entry or []
        # Each command checks all its arguments (LaunchError) before its first gcloud call.
        return COMMANDS[ns.command][0](ns, Gcloud(ns.dry_run))
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
