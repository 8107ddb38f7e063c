"""Orbax checkpoints of the train state, the data iterator and the config; preemption saves.

A checkpoint holds everything needed to continue bit-for-bit: params, optimizer state, step,
RNG, the grain iterator's position (one file per host) and the config that produced it.
Only finite states are saved, so every checkpoint is one to resume from; a resume takes the
newest checkpoint that reads back whole, and a changed model is named by its config keys.
"""
from __future__ import annotations

import json
import signal
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rdance.train import workdir as workdirlib
from rdance.train.host import sync


class NonFiniteLoss(RuntimeError):
    """A step produced a non-finite loss, gradient or parameters: the run stops."""


class CheckpointError(RuntimeError):
    pass


def last_good(path: str, remedy: str) -> str:
    """The end of a non-finite message: the checkpoint to resume from (every saved one is finite)."""
    then = "then resume from it" if path != "none" else "then rerun: there is no checkpoint yet, so it starts afresh"
    return f"last good checkpoint: {path}. {remedy}, {then}"


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, async_save: bool = True,
                 remedy: str = "Lower optim.learning_rate or set optim.grad_clip_norm"):
        """``remedy``: what to change when a step leaves non-finite parameters (named in the error)."""
        workdirlib.check_writable(directory)
        self.directory = epath.Path(directory)
        self.remedy = remedy
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def path_of(self, step: int | None) -> str:
        return "none" if step is None else str(self.directory / str(step))

    def save(self, step: int, state: Any, data_iter: Any, config: dict) -> None:
        """Save ``state`` unless it holds a non-finite value: then raise NonFiniteLoss naming the
        last checkpoint, which is therefore always finite."""
        bad = non_finite_leaves(state)
        if bad:
            raise NonFiniteLoss(
                f"step {step}: the update left non-finite values in {', '.join(bad[:3])}"
                f"{f' and {len(bad) - 3} more arrays' if len(bad) > 3 else ''} (its loss and gradient "
                f"were finite), so they were not saved; {last_good(self.path_of(self.latest_step()), self.remedy)}")
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

    def restore_latest(self, abstract_state: Any, data_iter: Any, config: dict) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that reads back whole, or None when there is none.

        Newer unreadable checkpoints (a truncated file, a crash mid-copy) are moved aside to
        ``checkpoints_unreadable/`` with a warning naming each and why. A checkpoint whose arrays
        do not fit ``abstract_state`` means the model changed: CheckpointError names the config
        keys that changed since it was saved.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        unreadable = []
        for step in steps:
            try:
                self._check_fits(step, abstract_state, config)
                state = self.restore(step, abstract_state, data_iter)
                changed = config_changes(self.saved_config(step), config)
            except CheckpointError:
                raise
            except Exception as e:  # orbax and tensorstore raise bare Exceptions for unreadable data
                unreadable.append((step, _reason(e)))
                continue
            for bad, reason in unreadable:
                logging.warning("checkpoint %s cannot be read (%s): moved it to %s; resuming from %s",
                                self.path_of(bad), reason, self._move_aside(bad), self.path_of(step))
            if changed:
                logging.info("resuming from %s with config changes since it was saved: %s",
                             self.path_of(step), describe(changed))
            return step, state
        if unreadable:
            newest, reason = unreadable[0]
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read ({len(unreadable)} tried; {self.path_of(newest)}: "
                f"{reason}){self._changes_note(newest, config)}; move {self.directory} aside to start afresh, "
                "or pass another --workdir")
        return None

    def _check_fits(self, step: int, abstract_state: Any, config: dict) -> None:
        """Raise CheckpointError when the saved arrays' names or shapes differ from the ones this
        config builds; orbax would only say "set strict=False", which a user cannot set."""
        handler = ocp.StandardCheckpointHandler()
        saved = _shapes(handler.metadata(self.directory / str(step) / "state"))
        now = _shapes(abstract_state)
        differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if not differ:
            return
        first = next((k for k in differ if k.startswith("params.")), differ[0])
        changed = config_changes(self.saved_config(step), config)
        old_values = " ".join(f"--config.{key}={_flag(old)}" for key, old, _ in changed if old is not _ABSENT)
        raise CheckpointError(
            f"cannot resume from {self.path_of(step)}: {len(differ)} of its arrays do not fit this config "
            f"(e.g. {first}: saved {saved.get(first, 'absent')}, now {now.get(first, 'absent')}); config keys "
            f"changed since it was saved: {describe(changed) or 'none (the code changed)'}. Rerun with the "
            f"saved values{f' ({old_values})' if old_values else ''} or pass a fresh --workdir")

    def _changes_note(self, step: int, config: dict) -> str:
        """The config keys changed since ``step`` was saved, if any: a likelier cause than damage."""
        try:
            changed = config_changes(self.saved_config(step), config)
        except Exception:  # its config is unreadable too
            return ""
        return f"; config keys changed since it was saved: {describe(changed)}" if changed else ""

    def _unreadable_dir(self) -> epath.Path:
        return self.directory.parent / "checkpoints_unreadable"

    def _move_aside(self, step: int) -> str:
        """Move an unreadable checkpoint out of the manager's folder, so the resumed run can save
        that step again (orbax refuses to overwrite one); nothing is deleted."""
        target = self._unreadable_dir() / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        sync(f"moved_unreadable_checkpoint_{step}")
        self.manager.reload()
        return str(target)

    def saved_config(self, step: int) -> dict:
        return json.loads((self.directory / str(step) / "config" / "metadata").read_text())

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def non_finite_leaves(state: Any) -> list[str]:
    """Names of the floating-point arrays of ``state`` holding a NaN or an infinity."""
    finite = jax.device_get(_all_finite(state))
    return [name for name, ok in _flat(finite).items() if not ok]


@jax.jit
def _all_finite(tree):
    return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                        else jnp.array(True), tree)


_ABSENT = "(absent)"


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every config key whose value differs."""
    old, new = _flat_config(saved), _flat_config(json.loads(json.dumps(current)))
    return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT))
            for k in sorted(old.keys() | new.keys()) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key} {_flag(old)} -> {_flag(new)}" for key, old, new in changes)


def _flag(value: Any) -> str:
    """A value as ``--config.key=`` takes it: tuples in parentheses, strings bare."""
    if isinstance(value, list):
        return "(" + ",".join(_flag(v) for v in value) + ")"
    return value if isinstance(value, str) else json.dumps(value)


def _flat_config(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _flat(tree: Any) -> dict:
    """{'params.hidden.0.kernel': leaf} for a pytree, whatever its containers."""
    def name(key):
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)
    return {".".join(name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _shapes(tree: Any) -> dict:
    return {name: tuple(leaf.shape) for name, leaf in _flat(tree).items()}


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause: orbax wraps tensorstore's readable error in a
    message many lines long."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


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
