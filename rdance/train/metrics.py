"""Metrics to TensorBoard and metrics.jsonl (process 0 only)."""
from __future__ import annotations

import json
import os
from typing import Iterator

import jax
from absl import logging
from etils import epath


class MetricWriter:
    """TensorBoard events and ``metrics.jsonl`` in the workdir.

    Object stores (gs://) cannot append, so for a remote workdir the jsonl is kept in memory and
    rewritten whole at each write; a local workdir is appended to.
    """

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.jsonl_path = epath.Path(workdir) / "metrics.jsonl"
        self._remote = "://" in workdir
        self._lines: list[str] = []
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int | None) -> None:
        """Keep only the records up to ``step`` (None: none), those the checkpoint being resumed
        covers: later ones will be written again. A line that does not parse (a crash mid-write
        tears the last one) is dropped with a warning naming the file and the line."""
        if not self.enabled or not self.jsonl_path.exists():
            return
        kept, dropped = [], 0
        for record in read_records(self.jsonl_path):
            if step is not None and record["step"] <= step:
                kept.append(json.dumps(record) + "\n")
            elif step is None:
                dropped += 1
        if dropped:
            logging.warning("%s: dropping %d records of an earlier run that left no checkpoint; this run "
                            "writes those steps again", self.jsonl_path, dropped)
        self._lines = kept
        self._rewrite()

    def _rewrite(self) -> None:
        """Replace the jsonl with ``_lines`` whole: a crash while writing leaves the old file."""
        if self._remote:  # an object is replaced whole by each write
            self.jsonl_path.write_text("".join(self._lines))
            return
        partial = f"{self.jsonl_path}.partial"
        with open(partial, "w") as f:
            f.write("".join(self._lines))
        os.replace(partial, self.jsonl_path)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self._remote:
            self._lines.append(line)
            self._rewrite()
        else:
            with open(self.jsonl_path, "a") as f:
                f.write(line)

    def write_image(self, step: int, name: str, image_hwc) -> None:
        if self.enabled:
            self._tb.add_image(name, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_records(path) -> Iterator[dict]:
    """The records of a ``metrics.jsonl``, in order. A line that does not parse (a crash
    mid-write tears the last one) is skipped with a warning naming the file and the line."""
    for number, line in enumerate(epath.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            logging.warning("%s line %d is torn or not a metrics record (a run stopped mid-write?): "
                            "dropping it: %.80s", path, number, line)
            continue
        yield record


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN: no rate yet
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
