"""The README's conversion commands, one per public set, run as written on small sets of each
published layout (only the /data/... folders are swapped for the test's)."""
import importlib.util
import os
import shlex
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.data.test_preference_set import pickapic_rows, records  # noqa: F401 (records: a fixture)
from tests.data.test_published_layouts import hpdv2, imagerewarddb, read  # noqa: F401 (fixtures)
from tests.docs.commands import shell_lines

ENTRY = "rdance.run.preference_set"
HAS_BEAM = importlib.util.find_spec("apache_beam") is not None   # the test extra installs it


def readme_commands() -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        return [line for line in shell_lines(f.read()) if line.startswith(f"python -m {ENTRY} ")]


@pytest.fixture
def pickapic_v2(tmp_path, records):
    """A Hub download of Pick-a-Pic v2: data/<split>-NNNNN-of-NNNNN-<hash>.parquet with has_label
    and num_example_per_prompt; a tie in train."""
    data = tmp_path / "pickapic_v2" / "data"
    data.mkdir(parents=True)
    train = pickapic_rows(records[:4], ties=(2,))
    train = train.append_column("has_label", pa.array([True] * 4)).append_column(
        "num_example_per_prompt", pa.array([1, 2, 2, 1], pa.int64()))
    pq.write_table(train, data / "train-00000-of-00001-5c7a0d.parquet")
    pq.write_table(pickapic_rows(records[4:6]), data / "test-00000-of-00001-1e2f3a.parquet")
    return tmp_path / "pickapic_v2"


def test_each_public_set_converts_with_the_readme_command(tmp_path, pickapic_v2, hpdv2, imagerewarddb):
    commands = readme_commands()
    folders = {"/data/pickapic_v2": pickapic_v2, "/data/HPDv2": hpdv2[0], "/data/ImageRewardDB": imagerewarddb[0]}
    formats = {line.split("--format=")[1].split()[0] for line in commands}
    assert formats == {"pickapic_v2", "hpdv2", "imagerewarddb"}, commands
    for line in commands:
        if "--beam_pipeline_options=" in line and not HAS_BEAM:
            continue   # compared below only where apache_beam is installed
        tokens = shlex.split(line)
        manual = next(t.split("=", 1)[1] for t in tokens if t.startswith("--manual_dir="))
        assert manual in folders, f"{line}: no test layout for {manual}"
        tokens = [f"--manual_dir={folders[manual]}" if t.startswith("--manual_dir=") else
                  f"--data_dir={tmp_path / os.path.basename(t.split('=', 1)[1])}" if t.startswith("--data_dir=") else t
                  for t in tokens]
        run = subprocess.run([sys.executable, *tokens[1:]], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stderr[-2000:]}"
    fmt_splits = {"pickapic_v2": {"train": 4, "test": 2}, "hpdv2": {"train": 2, "test": 5},
                  "imagerewarddb": {"train": 6, "test": 3}}
    for fmt, splits in fmt_splits.items():
        assert {s: len(read(tmp_path / "tfds", fmt, s)) for s in splits} == splits, fmt
    # The Pick-a-Pic line keeps its tie soft, with the set's own weights.
    train = read(tmp_path / "tfds", "pickapic_v2", "train")
    assert [(r.tie, r.weight) for r in train] == [(False, 1.0), (False, 0.5), (True, 0.5), (False, 1.0)]
    # The Beam line (the DirectRunner's processes) writes the same records as the threaded one.
    assert any("--beam_pipeline_options=" in line for line in commands), commands
    if not HAS_BEAM:
        pytest.skip("apache_beam is not importable, so the README's Beam line was not run: "
                    "pip install -e '.[beam]' (the test extra installs it)")
    for split in ("train", "test"):
        threads, beam = read(tmp_path / "tfds", "pickapic_v2", split), read(tmp_path / "tfds_beam", "pickapic_v2", split)
        assert [(r.prompt, r.label, r.tie, r.weight) for r in beam] == [(r.prompt, r.label, r.tie, r.weight) for r in threads]
        for a, b in zip(threads, beam, strict=True):
            for x, y in zip(a.images, b.images, strict=True):
                assert (x == y).all()
