"""Jobs made of stages: each stage is one rdance entrypoint run as a child process in its own
workdir, finished once, skipped on a rerun, resumed from its checkpoints when interrupted.

A :class:`Stage` names an entrypoint module, the experiments/ config file it runs, the
``--config.*`` overrides and other flags it adds; a value may name another stage's folder as
``{stage:NAME}`` (e.g. ``reward.path="{stage:rm}/export"``). Its *settings hash* covers the
child's whole resolved config (the recipe file with the overrides applied, so a changed recipe is
a changed stage), its other flags, and the hashes of the stages it names in place of their paths.
:class:`Runner` runs a list of stages in order:

- a stage whose workdir holds ``DONE.json`` with the same hash is skipped; with another hash it is
  an error (the folder holds some other experiment's results) naming the folder;
- otherwise the child runs (``python -m MODULE --config=... --workdir=... --config.k=v ...``) with
  this process's environment (JAX_PLATFORMS and all) and a persistent XLA compilation cache, so a
  rerun or a second seed reuses compiled steps. The entrypoints resume from their own checkpoints,
  so rerunning an interrupted stage continues it;
- it is finished when the child exits 0 and its marker file exists: then ``DONE.json`` records the
  hash, the wall time (of every attempt), the attempts and the command. A child that exits
  ``status.EXIT_PREEMPTED`` (75) was stopped by SIGTERM after saving a checkpoint (its
  ``WORKDIR/PREEMPTED`` says where): the job stops, and rerunning it resumes the stage.

The child's whole output goes to ``LOGS/<stage>.log``, each attempt under a header line; its
progress lines are echoed with the stage's name and the job's overall ETA (the child's own ETA,
read from its ``WORKDIR/progress.json``, plus the estimates of the stages left, scaled by how
fast this run has gone against its estimates so far; until a stage has finished on this machine,
a range from the budgets of the machine they were timed on). :func:`job_lock` keeps a second job
out of a workdir in use.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import filelock
import ml_collections
from absl import flags
from ml_collections import config_flags

from rdance.core import status
from rdance.core.config_checks import check_override
from rdance.train.metrics import format_seconds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # rdance/jobs/ -> the checkout
DONE_FILE = "DONE.json"
PARTIAL_FILE = "PARTIAL.json"     # wall time and count of unfinished attempts, added to the finished one's
# A job's lock in its workdir; a training run's own lock (LOCK, in a stage's folder) is one level below.
JOB_LOCK = "JOB.lock"
# Where the stage budgets (estimate_s in experiments/) were timed: other CPUs run them at other speeds.
BUDGET_MACHINE = "2 idle cores of an AMD EPYC"
# How much slower than its budget a stage may run on another 2-core machine (an idle Intel Xeon ran
# every training stage 20-65% over): the top of the ETA range until this machine's speed is measured.
SLOWER_MACHINE = 1.7
# An absl log line: level letter, date, time, thread, file:line] message.
ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+\] (.*)$")
# Lines worth echoing to the console (everything goes to the stage's log file).
SHOWN = re.compile(r"^step \d+/\d+|^eval at step|^exported|^reference bank|^reusing the reference|"
                   r"^building the reference|^resuming from|^preempted|^wrote |^judge |^train_step compiled|"
                   r"^finetune_step compiled|^trained \d+ steps")
QUIET = re.compile(r"Type handler registry")   # orbax's note on rdance's CPU checkpoint handler
# The reference bank is built before the training loop starts writing progress.json: its log
# lines ("reference bank: 3/16 prompts") are the only progress there is until then.
BANK_FRACTION = re.compile(r"^reference bank: (\d+)/(\d+)")


# Flags of the entrypoints that run stages (rdance.run.demo, rdance.run.ablate), defined once here.
VERBOSE = flags.DEFINE_bool("verbose", False, "echo every line the stages print, not only their progress")
REUSE = flags.DEFINE_list("reuse", [], "workdirs (of a demo or an ablation run) whose finished stages are reused "
                                       "when their settings hash matches, instead of running them again")


class StageError(RuntimeError):
    pass


@dataclasses.dataclass
class Stage:
    """One child run: ``python -m MODULE --config=CONFIG --workdir=WORKDIR --config.K=V... --F=V...``
    for ``overrides`` {K: V} and ``flags`` {F: V}, where ``{stage:NAME}`` in a string value is
    stage NAME's workdir. ``copy`` maps a path inside this stage's workdir to ``(stage name, path
    inside its workdir)``, copied before the child starts unless it is there already (e.g. a
    reference bank an earlier stage built)."""
    name: str
    title: str
    module: str
    config: str                                  # experiments/X.py[:arg], relative to the repo
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)
    copy: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    marker: str = "export"                       # exists in the workdir once the stage has finished
    # Digests of what the stage reads from outside the job (e.g. a shipped model's files): a
    # changed input is a changed stage, like a changed setting.
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    estimate_s: float = 60.0
    workdir: str = ""                            # set by resolve()
    hash: str = ""                               # set by resolve()


# ----- configs

def config_file(spec: str) -> tuple[str, str | None]:
    """'experiments/x.py:arg' -> (absolute path, arg); relative paths are taken from the current
    directory, then from the repository."""
    path, _, arg = spec.partition(":")
    for candidate in (os.path.abspath(path), os.path.join(REPO, path)):
        if os.path.isfile(candidate):
            return candidate, arg or None
    raise StageError(f"config file {path} not found (looked in {os.getcwd()} and {REPO})")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict that ``--config=spec`` gives an entrypoint."""
    if REPO not in sys.path:   # experiments/ configs import each other as the package `experiments`
        sys.path.insert(0, REPO)
    path, arg = config_file(spec)
    module = config_flags.config_flags._LoadConfigModule(os.path.basename(path)[:-3], path)
    return module.get_config(*([arg] if arg else []))


def flatten(tree, prefix: str = "") -> dict[str, Any]:
    """Nested dicts / ConfigDicts -> {dotted key: value} (leaves only; empty sections vanish)."""
    out = {}
    items = tree.items() if hasattr(tree, "items") else []
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any],
                    where: str) -> ml_collections.ConfigDict:
    """``config`` with dotted overrides set; a key the config lacks is a StageError naming it."""
    config = ml_collections.ConfigDict(config.to_dict())   # unlocked copy, same types
    for key, value in overrides.items():
        try:
            check_override(config, key)
        except ValueError as e:
            raise StageError(f"{where}: {e}") from None
        node, _, name = key.rpartition(".")
        parent = config
        for part in filter(None, node.split(".")):
            parent = parent[part]
        value = _typed(parent[name], value, f"{where}: override {key}")
        try:
            parent[name] = value
        except TypeError as e:
            raise StageError(f"{where}: override {key}={value!r}: {e}") from None
    return config


def _typed(current, value, where: str):
    """``value`` as the type of the field it replaces: a string from the command line (or a
    list for a tuple) becomes the field's bool, int, float or tuple, as absl would parse it."""
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, str) or isinstance(current, str) or current is None:
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(current, (int, float)):
            return type(current)(value)
        if isinstance(current, tuple):
            parsed = ast.literal_eval(value)
            return tuple(parsed) if isinstance(parsed, (list, tuple)) else (parsed,)
    except (ValueError, SyntaxError):
        raise StageError(f"{where}={value!r}: not a {type(current).__name__}") from None
    return value


def parse_assignments(text: str, where: str) -> dict[str, str]:
    """'a.b=1;c=x,y' -> {'a.b': '1', 'c': 'x,y'}: extra overrides given as one string."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StageError(f"{where}: {item!r} is not KEY=VALUE (separate several with ';')")
        out[key.strip()] = value.strip()
    return out


def flag_value(value) -> str:
    """How a value is written on the child's command line (absl's config flags parse it back)."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ----- resolving a job

PLACEHOLDER = re.compile(r"\{stage:([A-Za-z0-9_.-]+)\}")


def dependencies(stage: Stage) -> list[str]:
    names = [dep for dep, _ in stage.copy.values()]
    for v in list(stage.overrides.values()) + list(stage.flags.values()):
        if isinstance(v, str):
            names += PLACEHOLDER.findall(v)
    return list(dict.fromkeys(names))


def _fill(value, lookup: Callable[[str], str]):
    """``value`` with every ``{stage:NAME}`` replaced by ``lookup(NAME)`` (non-strings unchanged)."""
    return PLACEHOLDER.sub(lambda m: lookup(m[1]), value) if isinstance(value, str) else value


def resolve(stages: Sequence[Stage], workdir_of: Callable[[Stage], str]) -> tuple[list[Stage], dict[str, Stage]]:
    """Check every stage's config and overrides (before anything runs), compute the settings
    hashes in order (a stage after those it names) and place each stage with ``workdir_of(stage)``.
    Two stages with the same hash are one stage: the later one's name becomes an alias of the
    first (references to it are rewritten), so shared work runs once. Returns the distinct stages
    in order, and every name (aliases too) -> its stage."""
    done: dict[str, Stage] = {}          # name (or alias) -> the distinct stage
    by_hash: dict[str, Stage] = {}
    out = []
    for stage in stages:
        missing = [dep for dep in dependencies(stage) if dep not in done]
        if missing:
            raise StageError(f"stage {stage.name} names stage(s) {missing}, which do not come before it")
        canonical = lambda name: "{stage:" + done[name].name + "}"  # noqa: E731
        stage = dataclasses.replace(
            stage, overrides={k: _fill(v, canonical) for k, v in stage.overrides.items()},
            flags={k: _fill(v, canonical) for k, v in stage.flags.items()},
            copy={k: (done[dep].name, sub) for k, (dep, sub) in stage.copy.items()})
        hashed = lambda name: "{hash:" + done[name].hash + "}"  # noqa: E731
        overrides = {k: _fill(v, hashed) for k, v in stage.overrides.items()}
        config = apply_overrides(load_config(stage.config), overrides, f"stage {stage.name}")
        payload = {"module": stage.module, "config": flatten(config.to_dict()),
                   "flags": {k: _fill(v, hashed) for k, v in stage.flags.items()},
                   "copy": {k: (done[dep].hash, sub) for k, (dep, sub) in stage.copy.items()}}
        if stage.inputs:   # absent otherwise, so the hashes of stages without inputs stay as they were
            payload["inputs"] = stage.inputs
        digest = _digest(payload)[:16]
        if digest in by_hash:
            done[stage.name] = by_hash[digest]
            continue
        if stage.name in done:
            raise StageError(f"two different stages are both named {stage.name!r}")
        stage = dataclasses.replace(stage, hash=digest)
        stage.workdir = os.path.abspath(workdir_of(stage))
        done[stage.name] = by_hash[digest] = stage
        out.append(stage)
    return out, done


def command(stage: Stage, by_name: dict[str, Stage]) -> list[str]:
    path, arg = config_file(stage.config)
    by_path = lambda name: by_name[name].workdir  # noqa: E731
    values = {**{f"config.{k}": v for k, v in stage.overrides.items()}, **stage.flags}
    return [sys.executable, "-m", stage.module, f"--config={path}{':' + arg if arg else ''}",
            f"--workdir={stage.workdir}"] + [f"--{k}={flag_value(_fill(v, by_path))}" for k, v in values.items()]


def read_done(workdir: str) -> dict | None:
    path = os.path.join(workdir, DONE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished_stages(roots: Sequence[str]) -> dict[str, str]:
    """Settings hash -> folder of every finished stage in the given workdirs (a demo's
    ``DIR/<stage>`` or an ablation run's ``DIR/stages/<kind>-<hash>``)."""
    found: dict[str, str] = {}
    for root in roots:
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise StageError(f"--reuse={root}: no such folder")
        for parent in (root, os.path.join(root, "stages")):
            for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
                done = read_done(os.path.join(parent, name))
                if done and done.get("hash"):
                    found.setdefault(done["hash"], os.path.realpath(os.path.join(parent, name)))
    return found


# ----- running

@contextlib.contextmanager
def job_lock(workdir: str):
    """Hold ``WORKDIR/JOB.lock`` while a job runs there, so a second job in the same workdir stops
    at once instead of racing the first. It is an flock: the OS releases it when its holder dies,
    even by SIGKILL, so a killed run never blocks the rerun."""
    path = os.path.join(workdir, JOB_LOCK)
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StageError(f"another job is running in {workdir} (it holds the lock {path}): wait for it to "
                         "finish, or use another --workdir") from None
    except OSError as e:
        raise StageError(f"cannot create the lock file {path} ({e.strerror}): use a writable --workdir") from None
    try:
        yield path
    finally:
        lock.release()


def cpu_model() -> str:
    """This machine's CPU ("model name" in /proc/cpuinfo, else platform's guess) and usable cores."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "an unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


class Clock:
    """Overall ETA: the running stage's remaining time plus the estimates of the stages after it,
    scaled by actual / estimated time of the stages this run has run whole (a resumed stage did only
    part of its work). Until one has, the speed of this machine is unknown and the ETA is a range:
    the budgets as they are (the speed of the machine they were timed on) to ``SLOWER_MACHINE``
    times them."""

    def __init__(self, estimates: Sequence[float]):
        self.estimates = list(estimates)
        self.started = time.perf_counter()
        self.spent = self.estimated = 0.0

    def finished(self, estimate: float, wall: float) -> None:
        self.spent += wall
        self.estimated += estimate

    @property
    def measured(self) -> bool:
        """Whether a stage has run whole in this run, so that ``speed`` is this machine's."""
        return self.estimated > 0

    @property
    def speed(self) -> float:
        return self.spent / self.estimated if self.measured else 1.0

    def eta(self, index: int, stage_remaining: float | None, stage_elapsed: float, speed: float | None = None) -> float:
        speed = self.speed if speed is None else speed
        if stage_remaining is None:
            stage_remaining = max(self.estimates[index] * speed - stage_elapsed, 0.0)
        return stage_remaining + speed * sum(self.estimates[index + 1:])

    def eta_text(self, index: int, stage_remaining: float | None, stage_elapsed: float) -> str:
        """The ETA as the console shows it: '0:12:30', or '0:12:30 to 0:21:15' while unmeasured."""
        low = self.eta(index, stage_remaining, stage_elapsed)
        high = low if self.measured else self.eta(index, stage_remaining, stage_elapsed, SLOWER_MACHINE)
        return span(low, high)

    def estimate_text(self, estimate: float) -> str:
        """A stage's expected time: its budget scaled by this run's speed, or a range while unmeasured."""
        return span(estimate * self.speed, estimate * (self.speed if self.measured else SLOWER_MACHINE))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def span(low: float, high: float) -> str:
    low_text, high_text = format_seconds(low), format_seconds(high)
    return low_text if low_text == high_text else f"{low_text} to {high_text}"


def read_partial(path: str) -> tuple[float, int]:
    """(wall seconds, count) of a stage's unfinished attempts, from its PARTIAL.json."""
    if not os.path.isfile(path):
        return 0.0, 0
    with open(path) as f:
        partial = json.load(f)
    return float(partial["wall_s"]), int(partial.get("attempts", 1))


def time_spent(this: float, total: float, earlier: int) -> str:
    """'0:04:36', or '0:04:36 (0:04:41 with 1 earlier attempt)': this attempt's time first, so it
    reads against the job's elapsed time, and all the stage's time beside it."""
    if earlier == 0:
        return format_seconds(this)
    return f"{format_seconds(this)} ({format_seconds(total)} with {earlier} earlier attempt{'s' * (earlier > 1)})"


def attempt_header(name: str, attempt: int, cmd: list[str], first_in_log: bool) -> str:
    """The lines that open an attempt's output in the stage's log, so a reader sees where a rerun
    starts below an earlier attempt's traceback."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    above = "" if first_in_log else "; earlier output above"
    return (("" if first_in_log else "\n") + f"===== stage {name}, attempt {attempt}, started {when}{above} =====\n"
            f"$ {' '.join(cmd)}\n")


@dataclasses.dataclass
class StageRun:
    name: str
    skipped: bool
    wall_s: float          # of every attempt
    workdir: str
    attempts: int = 1


class Runner:
    """Runs resolved stages in order, printing one stage line each and the children's progress.

    ``log_dir`` gets one log file per stage; ``compile_cache`` (a folder) is given to children as
    JAX_COMPILATION_CACHE_DIR unless the environment already names one; ``verbose`` echoes every
    line of the children's output instead of their progress lines only; ``extra`` counts steps the
    caller runs itself afterwards (stage lines read "stage i/(stages + extra)"); a stage not yet
    started whose settings hash is finished in one of the ``reuse`` workdirs is linked to that
    folder instead of run."""

    def __init__(self, stages: Sequence[Stage], log_dir: str, *, compile_cache: str | None = None,
                 verbose: bool = False, out=None, label: str = "stage", extra: int = 0, reuse: Sequence[str] = ()):
        self.stages, self.extra = list(stages), extra
        self.reusable = finished_stages(reuse)
        self.by_name = {s.name: s for s in self.stages}
        self.log_dir, self.verbose, self.label = log_dir, verbose, label
        self.out = out or sys.stdout
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if compile_cache and "JAX_COMPILATION_CACHE_DIR" not in self.env:
            self.env.update(JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
        self.env.pop("PYTEST_CURRENT_TEST", None)
        self._child: subprocess.Popen | None = None
        self._since = 0.0   # when the running attempt started (Unix time)
        self._terminated = False

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check_done_markers(self) -> None:
        """Every finished stage was finished with these settings (else: a clear error, before
        anything runs)."""
        for stage in self.stages:
            done = read_done(stage.workdir)
            if done is not None and done.get("hash") != stage.hash:
                raise StageError(
                    f"{stage.workdir} holds a finished '{stage.name}' stage made with other settings "
                    f"(hash {done.get('hash')}, now {stage.hash}): the config or a recipe in experiments/ "
                    f"changed. Use another --workdir, or delete {stage.workdir} (and the stages after it) "
                    f"to redo it")

    def run(self) -> list[StageRun]:
        self.check_done_markers()
        os.makedirs(self.log_dir, exist_ok=True)
        self.say(f"this machine: {cpu_model()}; the stage budgets were timed on {BUDGET_MACHINE}, so the ETA "
                 f"is a range (budget to budget x{SLOWER_MACHINE}) until a stage has finished here")
        # Stages that will be skipped or reused take no time: leave them out of the ETA from the start.
        clock = Clock([0.0 if self._will_skip(s) else s.estimate_s for s in self.stages])
        results = []
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._forward_sigterm)
        try:
            for index, stage in enumerate(self.stages):
                results.append(self._run_one(index, stage, clock))
        finally:
            signal.signal(signal.SIGTERM, previous)
        return results

    def _forward_sigterm(self, signum, frame):
        self._terminated = True
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)   # it checkpoints at its next step and exits

    def _will_skip(self, stage: Stage) -> bool:
        return read_done(stage.workdir) is not None or (
            stage.hash in self.reusable and not os.path.lexists(stage.workdir))

    def _head(self, index: int) -> str:
        return f"{self.label} {index + 1}/{len(self.stages) + self.extra} {self.stages[index].name}"

    def _run_one(self, index: int, stage: Stage, clock: Clock) -> StageRun:
        done = read_done(stage.workdir)
        if done is not None:
            self.say(f"{self._head(index)}: finished earlier in {format_seconds(done['wall_s'])}, skipped")
            return StageRun(stage.name, True, float(done["wall_s"]), stage.workdir, done.get("attempts", 1))
        if stage.hash in self.reusable and not os.path.lexists(stage.workdir):
            source = self.reusable[stage.hash]
            os.makedirs(os.path.dirname(stage.workdir), exist_ok=True)
            os.symlink(source, stage.workdir)
            self.say(f"{self._head(index)}: reused {source} (same settings)")
            done = read_done(source)
            return StageRun(stage.name, True, float(done["wall_s"]), stage.workdir, done.get("attempts", 1))
        if self._terminated:
            raise StageError(f"stopped by SIGTERM before stage {stage.name}: rerun the same command to go on")
        os.makedirs(stage.workdir, exist_ok=True)
        for dest, (dep, sub) in stage.copy.items():
            target = os.path.join(stage.workdir, dest)
            if not os.path.exists(target):
                shutil.rmtree(target + ".tmp", ignore_errors=True)
                shutil.copytree(os.path.join(self.by_name[dep].workdir, sub), target + ".tmp")
                os.replace(target + ".tmp", target)
        cmd = command(stage, self.by_name)
        log_path = os.path.join(self.log_dir, f"{os.path.basename(stage.workdir)}.log")
        self.say(f"{self._head(index)}: {stage.title} (about {clock.estimate_text(stage.estimate_s)}); "
                 f"elapsed {format_seconds(clock.elapsed())}, ETA {clock.eta_text(index, None, 0.0)}; "
                 f"log {log_path}")
        partial = os.path.join(stage.workdir, PARTIAL_FILE)
        before, earlier = read_partial(partial)
        started = time.perf_counter()
        try:
            code, tail = self._attempt(index, stage, clock, cmd, log_path, started, earlier + 1)
        finally:
            this = time.perf_counter() - started
            wall = before + this
            with open(partial, "w") as f:
                json.dump({"wall_s": wall, "attempts": earlier + 1}, f)
        spent = time_spent(this, wall, earlier)
        if code == status.EXIT_PREEMPTED:
            saved = status.read_preempted(stage.workdir)
            where = f" ({saved['checkpoint']}, step {saved['step']})" if saved else ""
            raise StageError(f"stage {stage.name} was stopped by SIGTERM and saved a checkpoint{where}: rerun the "
                             "same command to resume it")
        if code != 0:
            self.out.write("".join(tail[-40:]))
            raise StageError(f"stage {stage.name} failed (exit status {code}) after {spent}; "
                             f"its whole output is in {log_path}. Rerunning the same command resumes it.")
        if not os.path.exists(os.path.join(stage.workdir, stage.marker)):
            raise StageError(f"stage {stage.name} exited 0 but did not write {stage.marker} in {stage.workdir}; "
                             f"see {log_path}")
        record = {"stage": stage.name, "hash": stage.hash, "wall_s": wall, "attempts": earlier + 1,
                  "finished": time.time(), "command": cmd}
        tmp = os.path.join(stage.workdir, DONE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, os.path.join(stage.workdir, DONE_FILE))
        os.remove(partial)
        if earlier == 0:   # a resumed attempt did part of the stage's work: no measure of this machine's speed
            clock.finished(stage.estimate_s, this)
        eta = clock.eta_text(index + 1, None, 0.0) if index + 1 < len(self.stages) else format_seconds(0)
        self.say(f"{self._head(index)}: done in {spent}; elapsed {format_seconds(clock.elapsed())}, ETA {eta}")
        return StageRun(stage.name, False, wall, stage.workdir, earlier + 1)

    def _attempt(self, index: int, stage: Stage, clock: Clock, cmd: list[str], log_path: str, started: float,
                 attempt: int):
        """Run the child once: (exit status, its last lines)."""
        tail: list[str] = []
        self._since = time.time()   # progress.json written before this attempt is an earlier one's
        with open(log_path, "a") as log:
            log.write(attempt_header(stage.name, attempt, cmd, first_in_log=log.tell() == 0))
            self._child = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, bufsize=1)
            try:
                for line in self._child.stdout:
                    log.write(line)
                    tail = (tail + [line])[-60:]
                    self._echo(index, stage, line.rstrip("\n"), clock, time.perf_counter() - started)
                code = self._child.wait()
            except KeyboardInterrupt:
                if self._child.poll() is None:   # a terminal's Ctrl-C reaches it too; kill(1) may not
                    self._child.send_signal(signal.SIGTERM)
                self._child.wait()
                raise StageError(f"interrupted in stage {stage.name}: rerun the same command to resume it")
            finally:
                self._child = None
        return code, tail

    def _echo(self, index: int, stage: Stage, line: str, clock: Clock, elapsed: float) -> None:
        match = ABSL_LINE.match(line)
        if self.verbose:
            self.say(f"  [{stage.name}] {match[2] if match else line}")
            return
        if not match or not (match[1] in "WEF" or SHOWN.search(match[2])) or QUIET.search(match[2]):
            return
        message = match[2]
        remaining = None
        progress = status.read_progress(stage.workdir, since=self._since)
        fraction = BANK_FRACTION.search(message)
        if progress is not None and progress.get("eta_s") is not None:
            remaining = float(progress["eta_s"])
        elif fraction and int(fraction[1]) > 0:
            remaining = elapsed * (int(fraction[2]) - int(fraction[1])) / int(fraction[1])
        suffix = ""
        if remaining is not None:
            suffix = f"  | {self.label}s ETA {clock.eta_text(index, remaining, elapsed)}"
        level = "" if match[1] == "I" else f"{match[1]} "
        self.say(f"  [{stage.name}] {level}{message}{suffix}")
