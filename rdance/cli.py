"""What every absl entrypoint shares: the config and workdir flags, multi-host start-up, and a
check of ``--config.*`` overrides that names a misspelt key and the valid keys beside it.

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
from etils import epath
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/*.py config file", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and outputs go")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize() (TPU pods: everything auto-detected)")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (not on TPU)")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (not on TPU)")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (not on TPU)")


class ConfigKeyError(ValueError):
    pass


def check_override(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raise ConfigKeyError naming ``dotted`` and the keys valid where it went wrong."""
    node, walked = config, []
    for part in dotted.split("."):
        name = part.split("[")[0]
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or name not in node:
            where = ".".join(walked) or "the top level"
            valid = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
            raise ConfigKeyError(
                f"unknown config key '{dotted}': '{name}' is not in {where}; valid keys there: "
                f"{', '.join(valid) or '(none: it is a value, not a section)'}")
        node, walked = node[name], walked + [name]


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
    if path and overrides:
        module_path, _, arg = path.partition(":")
        if not os.path.exists(module_path):
            sys.exit(f"error: config file {module_path} does not exist")
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


def start() -> tuple[ml_collections.ConfigDict, str]:
    """Call from main: multi-host set-up, then the config and the workdir."""
    if CONFIG.value is None or WORKDIR.value is None:
        sys.exit("error: --config and --workdir are required")
    if DISTRIBUTED.value:
        # CPU processes exchange collectives over gloo (tests and laptops); TPUs ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        if COORDINATOR.value:
            kwargs = dict(coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                          process_id=PROCESS_ID.value)
        jax.distributed.initialize(**kwargs)
    epath.Path(WORKDIR.value).mkdir(parents=True, exist_ok=True)
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
