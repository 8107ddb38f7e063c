"""What every absl entrypoint shares: the config and workdir flags, multi-host start-up, and the
checks that stop a job before any work: a missing config file, a misspelt ``--config.*`` key
(named with the valid keys beside it), a count out of range, an unwritable or busy workdir.

Flags are defined when an entrypoint imports this module; nothing runs until ``start``.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys
import tempfile

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from rdance.core import config_checks, sharding
from rdance.core.config_checks import ConfigKeyError, check_override
from rdance.data.records import BadRecord
from rdance.models.convert import ConversionError
from rdance.models.internvl.config import ConfigError as CheckpointConfigError
from rdance.train import workdir as workdirlib
from rdance.train.checkpoint import CheckpointError, NonFiniteLoss

CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/*.py config file", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and outputs go")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize() (TPU pods: everything auto-detected)")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (not on TPU)")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (not on TPU)")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (not on TPU)")


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags parser that checks config overrides first, so a typo fails before any work."""
    path = _config_path(argv)
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    module_path, _, arg = (path or "").partition(":")
    if path and not os.path.isfile(module_path):
        sys.exit(f"error: config file {module_path} does not exist; pass --config=experiments/NAME.py "
                 "(the files in experiments/), with a path relative to where you run the command")
    if path and overrides:
        config = config_flags.config_flags._LoadConfigModule("config", module_path).get_config(
            *([arg] if arg else []))
        try:
            for key in overrides:
                check_override(config, key)
        except ConfigKeyError as e:
            sys.exit(f"error: {e}")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")


class _QuietLibraries(std_logging.Filter):
    """Orbax logs several INFO lines per checkpoint; keep its warnings, drop the chatter."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


# The workdir lock, held until this process exits (the OS releases it even on SIGKILL).
_workdir_lock = None

# Errors whose message names what is wrong and the fix: a traceback would only bury it.
USER_ERRORS = (CheckpointError, NonFiniteLoss, workdirlib.WorkdirError, config_checks.ConfigValueError,
               BadRecord, CheckpointConfigError, ConversionError, sharding.ShardingError)


def _one_line_user_errors(previous):
    def hook(kind, error, traceback):
        if issubclass(kind, USER_ERRORS):
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            previous(kind, error, traceback)
    return hook


def start() -> tuple[ml_collections.ConfigDict, str]:
    """Call from main: check the config, multi-host set-up, claim the workdir; then the config and
    the workdir."""
    global _workdir_lock
    sys.excepthook = _one_line_user_errors(sys.excepthook)
    if CONFIG.value is None or WORKDIR.value is None:
        sys.exit("error: --config and --workdir are required")
    try:
        config_checks.check_bounds(CONFIG.value)
    except config_checks.ConfigValueError as e:
        sys.exit(f"error: {e}")
    if DISTRIBUTED.value:
        # CPU processes exchange collectives over gloo (tests and laptops); TPUs ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        if COORDINATOR.value:
            kwargs = dict(coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                          process_id=PROCESS_ID.value)
        jax.distributed.initialize(**kwargs)
    try:
        # Every process writes its shards of each checkpoint; process 0 alone writes the rest.
        workdirlib.check_writable(WORKDIR.value, *workdirlib.existing(WORKDIR.value, "checkpoints"))
        if jax.process_index() == 0:
            _workdir_lock = workdirlib.lock(WORKDIR.value)
    except workdirlib.WorkdirError as e:
        sys.exit(f"error: {e}")
    # absl writes its log with local file I/O: a gs:// workdir keeps the log on the worker.
    log_dir = WORKDIR.value if "://" not in WORKDIR.value else os.path.join(tempfile.gettempdir(), "rdance")
    os.makedirs(log_dir, exist_ok=True)
    handler = logging.get_absl_handler()
    handler.use_absl_log_file(f"log.process{jax.process_index()}", log_dir)
    handler.addFilter(_QuietLibraries())
    logging.set_stderrthreshold(logging.INFO)  # progress lines on the console as well as the file
    logging.info("process %d/%d, %d local devices, %d global",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    logging.info("config:\n%s", CONFIG.value)
    return CONFIG.value, WORKDIR.value
