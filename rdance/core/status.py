"""What a training run tells whoever started it (the stage runner, the TPU launcher, a script)
without log text to grep. The training loop writes these; rdance.jobs and launch/tpu.py read them.

- Exit status ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL in sysexits.h): SIGTERM (a preemption, or a
  stop) made the run save a checkpoint and stop before its last step; rerunning the same command
  resumes it. 0 means finished; anything else, failed.
- ``WORKDIR/PREEMPTED``: the same news as JSON, ``{"step", "checkpoint", "time"}`` (the step
  saved, its checkpoint folder, Unix time). A run that starts stepping in the workdir removes it.
- ``WORKDIR/progress.json``: ``{"phase", "step", "total", "steps_per_s", "eta_s", "time"}``,
  replaced whole at each log line; phase is "train", "eval", "preempted" or "done"; ``eta_s`` is
  null until there is a rate.

The human log lines ("step 10/40 ... ETA", "preempted: saved ...") stay as they were, for people.
"""
from __future__ import annotations

import json
import os
import sys
import time

from etils import epath

EXIT_PREEMPTED = 75          # launch/tpu.py repeats it (standard library only): keep them equal
PREEMPTED_FILE = "PREEMPTED"
PROGRESS_FILE = "progress.json"


def write_json(path: str, record: dict) -> None:
    """``record`` to ``path`` whole: a reader never sees half of it (a temporary file, then
    os.replace; an object store replaces an object whole by itself)."""
    text = json.dumps(record)
    if "://" in str(path):
        epath.Path(path).write_text(text)
        return
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


def read_json(path: str) -> dict | None:
    """The JSON object at ``path``, or None when there is none (or it does not parse)."""
    try:
        record = json.loads(epath.Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def mark_preempted(workdir: str, step: int, checkpoint: str) -> None:
    write_json(os.path.join(workdir, PREEMPTED_FILE), {"step": step, "checkpoint": checkpoint, "time": time.time()})


def clear_preempted(workdir: str) -> None:
    epath.Path(workdir, PREEMPTED_FILE).unlink(missing_ok=True)


def read_preempted(workdir: str) -> dict | None:
    return read_json(os.path.join(workdir, PREEMPTED_FILE))


def write_progress(workdir: str, phase: str, step: int, total: int, steps_per_s: float | None) -> None:
    eta = (total - step) / steps_per_s if steps_per_s else None
    write_json(os.path.join(workdir, PROGRESS_FILE),
               {"phase": phase, "step": step, "total": total, "steps_per_s": steps_per_s, "eta_s": eta,
                "time": time.time()})


def read_progress(workdir: str, since: float = 0.0) -> dict | None:
    """WORKDIR/progress.json if it was written at or after Unix time ``since`` (an earlier
    attempt's is stale), else None."""
    record = read_json(os.path.join(workdir, PROGRESS_FILE))
    return record if record is not None and record.get("time", 0) >= since else None


def exit_if_preempted(preempted: bool) -> None:
    """End an entrypoint with ``EXIT_PREEMPTED`` when its run was preempted."""
    if preempted:
        sys.exit(EXIT_PREEMPTED)
