"""Converting a Pick-a-Pic-like set: rows/s, output size against input size, peak memory.

    python bench/bench_convert.py [--rows 100,400] [--min_px 512 --max_px 768] [--workers 1,2] [--beam]

Writes synthetic Pick-a-Pic v2 parquet files (two photo-like JPEGs a row, 512-768 px, quality
90, as the set's images are), converts each with ``python -m rdance.run.preference_set`` in a
child process, with one decoding thread and with one per core (``--workers``), and prints one
table: rows, threads, input MB, output MB and their ratio, wall time and rows/s, the child's CPU
seconds (all threads, and its main thread's) and its peak RSS, so two sizes show whether memory
stays bounded. The last lines project Pick-a-Pic v2's train split (959,040 rows) on 1, 2 and 64
dedicated cores from the CPU a row costs between the two sizes (start-up left out; see
:func:`projection`): CPU time, not wall time, because the machine may be shared.

Measured (``--rows 200,800``, Intel Xeon, 2 cores shared with other jobs: load average 13.6, so
the wall times are not this converter's own; CPU times are):

| rows | threads | input MB | output MB | output / input | wall s | rows/s (wall) | CPU s | main thread CPU s | peak RSS MB |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 200 | 1 | 45.0 | 45.2 | 1.00 | 7.7 | 26.1 | 3.6 | 3.5 | 366 |
| 200 | 2 | 45.0 | 45.2 | 1.00 | 7.3 | 27.5 | 3.5 | 1.9 | 379 |
| 800 | 1 | 180.4 | 180.9 | 1.00 | 18.7 | 42.7 | 8.9 | 8.6 | 368 |
| 800 | 2 | 180.4 | 180.9 | 1.00 | 22.7 | 35.2 | 10.3 | 3.3 | 378 |

Peak RSS from 200 to 800 rows: +0% with 1 thread, -0% with 2 (goal: within 10%). Before the
builder's in-order writer (rdance.data.preference_builder._InOrder), the same command at
commit 83cf432: 407 MB at 200 rows, 528 MB at 800 (+30%): TFDS's Shuffler held the whole
unshuffled split in memory (to 1 GB, then all of it again from its single bucket file), so it
grew with the set without bound. A row costs 11 ms of CPU (9 ms with one thread), 2 ms of it on
the main thread with 2 threads (parquet reading, TFDS encoding, writing). Projected for Pick-a-Pic
v2's train split, one process with a decoding thread per core (an upper bound: GIL waits and disk
I/O are not modelled):

| cores | rows/s | Pick-a-Pic v2 train |
|---:|---:|---:|
| 1 | 88 | 3.0 h |
| 2 | 175 | 1.5 h |
| 64 | 418 | 0.6 h (bound by the main thread: 2.3 ms a row) |

More cores than about 5 do not help one process; several processes (TFDS's Beam path) do.

The Beam path (``--beam``: ``--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,
direct_running_mode=multi_processing``, one worker process per core), measured with
``--rows 200,800 --workers 1,2 --beam`` at commit a856951 (Intel Xeon, 2 cores shared with other
jobs, load average 11.0 at the start; the threaded rows of the same run beside it). For Beam,
CPU s adds the worker processes' CPU to the driver's, and peak RSS gives the driver's and the
largest worker's:

| rows | threads | input MB | output MB | output / input | wall s | rows/s (wall) | CPU s | main thread CPU s | peak RSS MB |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 200 | 1 | 45.0 | 45.2 | 1.00 | 8.8 | 22.6 | 3.2 | 3.1 | 390 |
| 200 | 2 | 45.0 | 45.2 | 1.00 | 8.1 | 24.7 | 3.3 | 1.8 | 397 |
| 200 | Beam, 2 processes | 45.0 | 45.2 | 1.00 | 16.5 | 12.1 | 12.5 | 2.9 | 835 (workers 851) |
| 800 | 1 | 180.4 | 180.9 | 1.00 | 8.0 | 99.4 | 7.8 | 7.5 | 409 |
| 800 | 2 | 180.4 | 180.9 | 1.00 | 8.5 | 93.8 | 8.2 | 2.5 | 426 |
| 800 | Beam, 2 processes | 180.4 | 180.9 | 1.00 | 24.3 | 33.0 | 26.2 | 3.0 | 1539 (workers 1339) |

Beam on 2 processes: 76.8 rows/s between 200 and 800 rows (start-up, about 14 s, left out),
23 ms of CPU a row against the threaded path's 8 ms: every example crosses Beam's process
boundaries (to the workers' decode, back for the writer's GroupByKey) pickled. On one 2-core
machine the threaded path is faster; Beam is for more cores than one process can use. The
DirectRunner holds the GroupByKey's data in memory, so its peak RSS grows with the set (835 to
1,539 MB in the driver): use it to check a pipeline, not to convert Pick-a-Pic v2 on one
machine. On a cluster runner the shuffle goes to disk and a worker holds one output shard
(TFDS's shards stay under 1 GiB). Projected from the CPU a row alone (an upper bound: the
shuffle and the writing of 322 GB are not modelled), 64 worker cores would convert Pick-a-Pic
v2's train split in about 0.1 h (959,040 rows x 23 ms / 64).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PICKAPIC_TRAIN_ROWS = 959_040
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photo_jpeg(rng: np.random.Generator, min_px: int, max_px: int) -> bytes:
    """A photo-like JPEG: smooth colour fields plus sensor-like noise, at a random size."""
    h, w = rng.integers(min_px, max_px + 1, 2)
    y, x = np.mgrid[:h, :w] / max(h, w)
    phase = rng.uniform(0, 6, 3)
    base = np.stack([np.sin(5 * x + phase[0]), np.cos(4 * y + phase[1]), np.sin(3 * (x + y) + phase[2])], -1)
    image = np.clip(base * 90 + 128 + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_set(folder: str, rows: int, min_px: int, max_px: int, rows_per_file: int = 50) -> int:
    """Pick-a-Pic v2 parquet shards (its column names and Hub file names); returns bytes written."""
    rng = np.random.default_rng(rows)
    data = os.path.join(folder, "data")
    os.makedirs(data)
    files = -(-rows // rows_per_file)
    for f in range(files):
        n = min(rows_per_file, rows - f * rows_per_file)
        winners = rng.integers(0, 2, n)
        table = pa.table({"caption": [f"a photo {f}-{i}" for i in range(n)],
                          "jpg_0": [photo_jpeg(rng, min_px, max_px) for _ in range(n)],
                          "jpg_1": [photo_jpeg(rng, min_px, max_px) for _ in range(n)],
                          "label_0": (1.0 - winners).tolist(), "label_1": winners.astype(float).tolist(),
                          "has_label": [True] * n})
        pq.write_table(table, os.path.join(data, f"train-{f:05d}-of-{files:05d}-0bench.parquet"))
    return folder_bytes(folder)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(folder) for f in names)


# The converter as `python -m` runs it, reporting as it exits its peak RSS, its CPU time and the
# main thread's (the main thread reads parquet, encodes and writes; --workers threads decode),
# and the CPU seconds and largest peak RSS of its child processes (Beam's DirectRunner workers).
CHILD = ("import atexit, resource, runpy, sys, time; "
         "atexit.register(lambda: (lambda c: print('child_stats', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "time.process_time(), time.thread_time(), c.ru_utime + c.ru_stime, c.ru_maxrss, file=sys.stderr))("
         "resource.getrusage(resource.RUSAGE_CHILDREN))); sys.argv[0] = 'preference_set'; "
         "runpy.run_module('rdance.run.preference_set', run_name='__main__')")
# The Beam path on this machine: the DirectRunner's worker processes, one per core.
BEAM_OPTIONS = "runner=DirectRunner,direct_num_workers={cores},direct_running_mode=multi_processing"


@dataclasses.dataclass
class Run:
    rows: int
    wall: float       # seconds
    peak_mb: float    # the converting process's peak RSS
    cpu: float        # its CPU seconds, all threads
    main_cpu: float   # its main thread's CPU seconds
    children_cpu: float = 0.0     # its child processes' CPU seconds (Beam's workers)
    children_peak_mb: float = 0.0  # the largest peak RSS among them


def convert(raw: str, out: str, workers: int, rows: int, beam: str = "") -> Run:
    """One conversion: ``workers`` decoding threads, or with ``beam`` the Beam pipeline options."""
    start = time.perf_counter()
    how = [f"--beam_pipeline_options={beam}"] if beam else [f"--workers={workers}"]
    done = subprocess.run([sys.executable, "-c", CHILD, "--format=pickapic_v2", f"--manual_dir={raw}",
                           f"--data_dir={out}", *how], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    stats = next(line.split()[1:] for line in done.stderr.splitlines() if line.startswith("child_stats"))
    return Run(rows, wall, int(stats[0]) / 1024, float(stats[1]), float(stats[2]), float(stats[3]),
               int(stats[4]) / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100,400", help="comma-separated set sizes, increasing")
    parser.add_argument("--min_px", type=int, default=512)
    parser.add_argument("--max_px", type=int, default=768)
    parser.add_argument("--workers", default="", help="comma-separated decoding threads (default: 1 and one per core)")
    parser.add_argument("--beam", action="store_true", help="also convert through Beam: the DirectRunner in "
                        "multi_processing mode, one worker process per core")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_name()}, {cores} cores, load average {os.getloadavg()[0]:.1f} at the start; threads: one "
          f"converting process; Beam: a driver and {cores} worker processes (CPU s: all of them)")
    print("| rows | threads | input MB | output MB | output / input | wall s | rows/s (wall) | CPU s | "
          "main thread CPU s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[int, list[Run]] = {int(w): [] for w in (args.workers or f"1,{cores}").split(",")}
    beam_runs: list[Run] = []
    for rows in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "raw")
            size_in = write_set(raw, rows, args.min_px, args.max_px)
            for workers in runs:
                out = os.path.join(tmp, f"tfds{workers}")
                run = convert(raw, out, workers, rows)
                size_out = folder_bytes(out)
                runs[workers].append(run)
                print(f"| {rows} | {workers} | {size_in / 1e6:.1f} | {size_out / 1e6:.1f} | {size_out / size_in:.2f} | "
                      f"{run.wall:.1f} | {rows / run.wall:.1f} | {run.cpu:.1f} | {run.main_cpu:.1f} | {run.peak_mb:.0f} |")
            if args.beam:
                out = os.path.join(tmp, "tfds_beam")
                run = convert(raw, out, 0, rows, BEAM_OPTIONS.format(cores=cores))
                size_out = folder_bytes(out)
                beam_runs.append(run)
                print(f"| {rows} | Beam, {cores} processes | {size_in / 1e6:.1f} | {size_out / 1e6:.1f} | "
                      f"{size_out / size_in:.2f} | {run.wall:.1f} | {rows / run.wall:.1f} | "
                      f"{run.cpu + run.children_cpu:.1f} | {run.main_cpu:.1f} | "
                      f"{run.peak_mb:.0f} (workers {run.children_peak_mb:.0f}) |")
    for workers, done in runs.items():
        if len(done) > 1:
            print(f"{workers} thread(s): peak RSS {done[-1].peak_mb / done[0].peak_mb - 1:+.0%} from {done[0].rows} "
                  f"to {done[-1].rows} rows")
    if len(beam_runs) > 1:
        a, b = beam_runs[-2], beam_runs[-1]
        print(f"Beam, {cores} processes: {(b.rows - a.rows) / (b.wall - a.wall):.1f} rows/s between {a.rows} and "
              f"{b.rows} rows (wall, start-up left out); CPU a row {((b.cpu + b.children_cpu) - (a.cpu + a.children_cpu)) / (b.rows - a.rows) * 1e3:.0f} ms "
              "over the driver and its workers")
        cpu_row = ((b.cpu + b.children_cpu) - (a.cpu + a.children_cpu)) / (b.rows - a.rows)
        if cpu_row > 0:
            print(f"projection, Beam on 64 worker cores, from the CPU a row alone (shuffle and writing not modelled): "
                  f"{64 / cpu_row:.0f} rows/s; Pick-a-Pic v2 train {PICKAPIC_TRAIN_ROWS * cpu_row / 64 / 3600:.1f} h")
    most = max(runs)
    if len(runs[most]) > 1:
        for cores_then in (1, 2, 64):
            print(projection(runs[most], cores_then))


def projection(done: list[Run], cores: int) -> str:
    """Pick-a-Pic v2's train split on ``cores`` dedicated cores, one converting process with a
    decoding thread per core, from CPU time (so other load on this machine does not count).

    Per row, between the two largest sizes (start-up left out): ``main`` CPU seconds on the
    main thread (parquet reading, TFDS encoding, writing: one thread, whatever the cores) and
    ``total`` CPU seconds over all threads. The main thread and the decoders work as a pipeline,
    so a row costs max(main, total / cores) of wall time; GIL waits are not modelled, so this
    is an upper bound on the rate."""
    a, b = done[-2], done[-1]
    rows = b.rows - a.rows
    main, total = (b.main_cpu - a.main_cpu) / rows, (b.cpu - a.cpu) / rows
    per_row = max(main, total / cores)
    if main <= 0 or total <= 0:
        return f"projection, {cores} core(s): too few rows to measure a row's cost; run with more --rows"
    return (f"projection, {cores} core(s), one process: {1 / per_row:.0f} rows/s (CPU a row: {total * 1e3:.0f} ms, "
            f"{main * 1e3:.0f} ms of it on the main thread); Pick-a-Pic v2 train ({PICKAPIC_TRAIN_ROWS:,} rows) "
            f"{PICKAPIC_TRAIN_ROWS * per_row / 3600:.1f} h")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
