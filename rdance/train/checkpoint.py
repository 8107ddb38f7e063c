"""Orbax checkpoints of the train state, the data iterator and the config; preemption saves.

A checkpoint holds everything needed to continue bit-for-bit: params, optimizer state, step,
RNG, the grain iterator's position (one file per host) and the config that produced it.
"""
from __future__ import annotations

import json
import signal
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def path_of(self, step: int | None) -> str:
        return "none" if step is None else str(self.directory / str(step))

    def save(self, step: int, state: Any, data_iter: Any, config: dict) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config),
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
        """Restore into ``abstract_state``'s shardings; the iterator is restored in place."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter),
        ))
        return restored.state

    def saved_config(self, step: int) -> dict:
        return json.loads((self.directory / str(step) / "config" / "metadata").read_text())

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionWatch:
    """True once this job should checkpoint and exit: SIGTERM is how a TPU VM is preempted.

    With several processes every host must stop at the same step, so we ask JAX's preemption
    sync point (the coordination service catches SIGTERM on each host); alone, a signal
    handler sets a flag that the loop reads at the next step boundary.
    """

    def __init__(self):
        self._signalled = False
        self._multi = jax.process_count() > 1
        if not self._multi:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing at the next step boundary")
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        if not self._multi:
            signal.signal(signal.SIGTERM, self._previous)
