"""The workdir of a job: checked writable before any work, and locked so one job at a time writes it.

Both happen in ``cli.start``, before the mesh, the data or a compile: an unwritable folder found
only at the first checkpoint would cost every step before it, and two jobs on one workdir would
interleave their metrics and overwrite each other's checkpoints.
"""
from __future__ import annotations

import os
import socket
import time

import filelock
from absl import logging
from etils import epath

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"   # who holds the lock, for the message a second job sees


class WorkdirError(RuntimeError):
    pass


def check_writable(*folders: str) -> None:
    """Create each folder and write (then remove) a small file in it; raise WorkdirError naming the
    first folder that cannot be written. A real write, not ``os.access``: root, read-only mounts
    and object-store permissions all answer only to trying."""
    for folder in folders:
        path = epath.Path(folder)
        if path.exists() and not path.is_dir():
            raise WorkdirError(f"{folder} is a file, not a folder: move it away or pass another --workdir")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except Exception as e:  # OSError locally; object stores raise their own errors
            parent = _nearest_existing(path)
            raise WorkdirError(f"cannot create {folder} ({_reason(e)} in {parent}): make {parent} writable "
                               f"(e.g. chmod u+w {parent}) or pass another --workdir") from None
        probe = path / f".write_check.{socket.gethostname()}.{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except Exception as e:
            raise WorkdirError(f"cannot write to {folder} ({_reason(e)}): make it writable (e.g. chmod -R u+w "
                               f"{folder}) or pass another --workdir") from None


def _nearest_existing(path: epath.Path) -> epath.Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]


def existing(workdir: str, *names: str) -> list[str]:
    """The folders ``WORKDIR/NAME`` that exist already (one created later inherits the workdir's
    permissions, so only these can differ from it)."""
    return [str(epath.Path(workdir) / name) for name in names if (epath.Path(workdir) / name).exists()]


def lock(workdir: str) -> filelock.BaseFileLock | None:
    """Hold ``WORKDIR/.lock`` for as long as this process lives (keep the returned object).

    An OS file lock (flock): a job killed by SIGKILL, OOM or a lost VM releases it with its
    process, so a rerun is never blocked by a stale lock. Object stores (gs://) have no locks:
    there nothing stops a second job, and we say so in the log.
    """
    if "://" in workdir:
        logging.warning("%s is an object store: it cannot be locked, so nothing stops a second job "
                        "writing it; run one job per workdir", workdir)
        return None
    held = filelock.FileLock(os.path.join(workdir, LOCK_NAME), timeout=0)
    try:
        held.acquire()
    except filelock.Timeout:
        raise WorkdirError(
            f"{workdir} is in use by another run ({_owner(workdir)}): wait for it to finish or stop it, "
            "or pass another --workdir") from None
    with open(os.path.join(workdir, OWNER_NAME), "w") as f:
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}")
    return held


def _owner(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, OWNER_NAME)) as f:
            return f.read().strip() or "owner unknown"
    except OSError:
        return "owner unknown"
