"""The Beam path (``--beam_pipeline_options``) builds the set the threaded path builds, record for
record, with the DirectRunner: a Pick-a-Pic v2 Hub download cut into row groups, and a JSONL
set cut into ranges of records, converted by the command as a user types it."""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rdance.data import sources
from rdance.data.preference_builder import PreferenceSource
from rdance.data.records import BadRecord, write_jsonl
from rdance.run import preference_set as ps
from rdance.world.pairs import PreferencePairs
from tests.conftest import REPO
from tests.data.test_published_layouts import hpdv2, imagerewarddb  # noqa: F401 (fixtures)

try:
    import apache_beam  # noqa: F401
except ImportError:
    pytest.skip("apache_beam is not importable: pip install -e '.[beam]' (the test extra installs it)",
                allow_module_level=True)

MULTI = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
IN_PROCESS = "--runner=DirectRunner,--direct_num_workers=1"   # the options' own -- is accepted too


def jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def command(fmt, manual, data_dir, *flags):
    run = subprocess.run([sys.executable, "-m", "rdance.run.preference_set", f"--format={fmt}",
                          f"--manual_dir={manual}", f"--data_dir={data_dir}", *flags], cwd=REPO,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
    return run


def read_all(data_dir, fmt):
    """{split: [(key, prompt, label, tie, weight, image bytes...)]} of a converted set, in order."""
    out = {}
    for split in ("train", "validation", "test"):
        try:
            source = PreferenceSource(str(data_dir), fmt, split=split)
        except (KeyError, ValueError):
            continue
        out[split] = [(source.source[i]["prompt"], int(source.source[i]["label"]), bool(source.source[i]["tie"]),
                       float(source.source[i]["weight"]), *map(bytes, source.source[i]["images"]))
                      for i in range(len(source))]
    return out


@pytest.fixture(scope="module")
def pickapic(tmp_path_factory):
    """A Hub download: data/train-0000k-of-00002-<hash>.parquet in row groups of 4 rows, a test
    file, and a validation file whose every row is a tie (an empty split); JPEG bytes as the set
    has them, a tie, an unlabelled row, a corrupt image and num_example_per_prompt."""
    root = tmp_path_factory.mktemp("pickapic")
    (root / "data").mkdir()
    pairs = PreferencePairs(24, seed=3, size=32)
    rng = np.random.default_rng(0)
    for name, lo, hi, tie_all in (("train-00000-of-00002-1a2b", 0, 10, False), ("train-00001-of-00002-1a2b", 10, 19, False),
                                  ("test-00000-of-00001-3c4d", 19, 22, False), ("validation-00000-of-00001-5e6f", 22, 24, True)):
        records = [pairs[i] for i in range(lo, hi)]
        label_1 = [float(r.label) for r in records]
        label_0 = [1.0 - v for v in label_1]
        jpg_0 = [jpeg(r.images[0]) for r in records]
        if tie_all:
            label_0 = label_1 = [0.5] * len(records)
        elif lo == 0:
            label_0[3] = label_1[3] = 0.5            # a tie
            jpg_0[6] = b"\xff\xd8 not a jpeg"         # a bad record
        table = pa.table({"caption": [f"prompt {i % 5}" for i in range(lo, hi)], "jpg_0": jpg_0,
                          "jpg_1": [jpeg(r.images[1]) for r in records], "label_0": label_0, "label_1": label_1,
                          "has_label": [not (lo == 10 and i == 2) for i in range(len(records))],
                          "num_example_per_prompt": rng.integers(1, 4, len(records)).tolist()})
        pq.write_table(table, root / "data" / f"{name}.parquet", row_group_size=4)
    return root


def test_pickapic_hub_download_through_beam_equals_threads(tmp_path, pickapic):
    assert len(sources.shards("pickapic_v2", sources.parquet_splits(str(pickapic))["train"])) == 6  # 3 + 3 row groups
    threads = command("pickapic_v2", pickapic, tmp_path / "threads", "--skip_bad_records", "--workers=2")
    beam = command("pickapic_v2", pickapic, tmp_path / "beam", "--skip_bad_records", f"--beam_pipeline_options={MULTI}")
    assert threads.returncode == 0, threads.stderr[-3000:]
    assert beam.returncode == 0, beam.stderr[-3000:]
    counts = ("written=19  bad=1 (image_unreadable=1)  ties=3  unlabelled=1 [test: written=3 | "
              "train: written=16  bad=1 (image_unreadable=1)  ties=1  unlabelled=1 | validation: EMPTY, left out: ties=2]")
    assert threads.stdout.splitlines()[-1] == f"{counts}; read it as tfds:{tmp_path / 'threads'}:pickapic_v2"
    assert beam.stdout.splitlines()[-1] == f"{counts}; read it as tfds:{tmp_path / 'beam'}:pickapic_v2"
    want, got = read_all(tmp_path / "threads", "pickapic_v2"), read_all(tmp_path / "beam", "pickapic_v2")
    assert sorted(got) == ["test", "train"]            # the empty split left out, as with threads
    assert [len(got["train"]), len(got["test"])] == [16, 3]
    for split in want:
        for a, b in zip(want[split], got[split], strict=True):
            assert a == b


def test_per_prompt_weights_and_soft_ties_through_beam(tmp_path, pickapic):
    kw = dict(skip_bad_records=True, ties="soft", weights="per_prompt")
    ps.convert("pickapic_v2", str(pickapic), str(tmp_path / "threads"), workers=1, **kw)
    ps.convert("pickapic_v2", str(pickapic), str(tmp_path / "beam"), beam_pipeline_options=IN_PROCESS, **kw)
    want, got = read_all(tmp_path / "threads", "pickapic_v2"), read_all(tmp_path / "beam", "pickapic_v2")
    assert sorted(want) == sorted(got) == ["test", "train", "validation"]   # soft ties: validation kept
    assert want == got
    assert {w for *_, w, _, _ in got["train"]} != {1.0}


@pytest.fixture(scope="module")
def jsonl_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("jsonl")
    pairs = PreferencePairs(11, seed=5, size=24)
    write_jsonl([pairs[i] for i in range(8)], str(root / "train.jsonl"))
    write_jsonl([pairs[i] for i in range(8, 11)], str(root / "test.jsonl"))
    return root


def test_jsonl_through_beam_equals_threads(tmp_path, jsonl_set):
    flags = ["--beam_records_per_shard=3"]   # train in 3 shards, test in 1
    threads = command("jsonl", jsonl_set, tmp_path / "threads")
    beam = command("jsonl", jsonl_set, tmp_path / "beam", f"--beam_pipeline_options={MULTI}", *flags)
    assert threads.returncode == 0, threads.stderr[-3000:]
    assert beam.returncode == 0, beam.stderr[-3000:]
    assert beam.stdout.splitlines()[-1].split(";")[0] == threads.stdout.splitlines()[-1].split(";")[0] == \
        "written=11 [test: written=3 | train: written=8]"
    want, got = read_all(tmp_path / "threads", "jsonl"), read_all(tmp_path / "beam", "jsonl")
    assert [len(got["train"]), len(got["test"])] == [8, 3]
    assert want == got


def test_a_bad_record_stops_the_beam_build_with_one_line_and_writes_nothing(tmp_path, pickapic):
    with pytest.raises(BadRecord, match=r"row 6 of .*train-00000-of-00002-1a2b.parquet: image cannot be decoded"):
        ps.convert("pickapic_v2", str(pickapic), str(tmp_path / "out"), beam_pipeline_options=IN_PROCESS)
    assert not os.path.exists(tmp_path / "out")
    # In the DirectRunner's worker processes too: the worker's report, not its traceback.
    run = command("pickapic_v2", pickapic, tmp_path / "out", f"--beam_pipeline_options={MULTI}")
    assert run.returncode == 1
    assert re.fullmatch(r"error: row 6 of .*train-00000-of-00002-1a2b.parquet: image cannot be decoded \(.*\); "
                        r"or pass --skip_bad_records to skip and count such records", run.stderr.splitlines()[-1])
    assert not os.path.exists(tmp_path / "out")


def test_unknown_beam_option_is_named_before_any_work(tmp_path, pickapic):
    with pytest.raises(ValueError, match="Beam knows no option --direct_num_wrokers"):
        ps.convert("pickapic_v2", str(pickapic), str(tmp_path / "out"),
                   beam_pipeline_options="runner=DirectRunner,direct_num_wrokers=2")


@pytest.mark.parametrize("fmt", ["hpdv2", "imagerewarddb"])
def test_published_hpdv2_and_imagerewarddb_through_beam_equal_threads(tmp_path, fmt, hpdv2, imagerewarddb):
    """HPDv2's JSON arrays cut one element a shard (a ranking's pairs stay in its shard);
    ImageRewardDB's files one shard, its prompts paired as with threads."""
    root = {"hpdv2": hpdv2, "imagerewarddb": imagerewarddb}[fmt][0]
    want = ps.convert(fmt, str(root), str(tmp_path / "threads"))
    got = ps.convert(fmt, str(root), str(tmp_path / "beam"), beam_pipeline_options=IN_PROCESS, beam_records_per_shard=1)
    assert got == want
    assert read_all(tmp_path / "beam", fmt) == read_all(tmp_path / "threads", fmt)
