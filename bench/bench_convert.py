"""Converting a Pick-a-Pic-like set: rows/s, output size against input size, peak memory.

    python bench/bench_convert.py [--rows 100,400] [--min_px 512 --max_px 768]

Writes synthetic Pick-a-Pic v2 parquet files (two photo-like JPEGs a row, 512-768 px, quality
90, as the set's images are), converts each with ``python -m rdance.run.preference_set`` in a
child process, with one decoding thread and with one per core (``--workers``), and prints one
table: rows, workers, input MB, output MB and their ratio, wall time, rows/s, and the child's
peak RSS, so two sizes show whether memory stays bounded. The last lines project Pick-a-Pic
v2's train split (959,040 rows) at the rate between the two largest sizes (start-up left out).
"""
from __future__ import annotations

import argparse
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


# The converter as `python -m` runs it, reporting its own peak RSS as it exits.
CHILD = ("import atexit, resource, runpy, sys; "
         "atexit.register(lambda: print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "file=sys.stderr)); sys.argv[0] = 'preference_set'; "
         "runpy.run_module('rdance.run.preference_set', run_name='__main__')")


def convert(raw: str, out: str, workers: int) -> tuple[float, float]:
    """(wall seconds, the converting process's peak RSS in MB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "--format=pickapic_v2", f"--manual_dir={raw}",
                           f"--data_dir={out}", f"--workers={workers}"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    peak_kb = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak_rss_kb")))
    return wall, peak_kb / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100,400", help="comma-separated set sizes, increasing")
    parser.add_argument("--min_px", type=int, default=512)
    parser.add_argument("--max_px", type=int, default=768)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_name()}, {cores} cores; one converting process")
    print("| rows | workers | input MB | output MB | output / input | wall s | rows/s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[int, list] = {1: [], cores: []}
    for rows in map(int, args.rows.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "raw")
            size_in = write_set(raw, rows, args.min_px, args.max_px)
            for workers in runs:
                out = os.path.join(tmp, f"tfds{workers}")
                wall, peak = convert(raw, out, workers)
                size_out = folder_bytes(out)
                runs[workers].append((rows, wall))
                print(f"| {rows} | {workers} | {size_in / 1e6:.1f} | {size_out / 1e6:.1f} | {size_out / size_in:.2f} | "
                      f"{wall:.1f} | {rows / wall:.1f} | {peak:.0f} |")
    for workers, done in runs.items():
        # The rate between the two largest sizes leaves out the start-up both pay (imports, TFDS setup).
        (rows_a, wall_a), (rows_b, wall_b) = done[-2:] if len(done) > 1 else ((0, 0.0), done[-1])
        rate = (rows_b - rows_a) / max(wall_b - wall_a, 1e-9)
        print(f"{workers} worker(s): marginal rate {rate:.1f} rows/s; Pick-a-Pic v2 train "
              f"({PICKAPIC_TRAIN_ROWS:,} rows) {PICKAPIC_TRAIN_ROWS / rate / 3600:.1f} h on this machine")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
