"""Every source format converts to ArrayRecord and reads back equal; bad records as specified."""
import collections
import io
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from absl.testing import flagsaver
from PIL import Image

from rdance.run import preference_set as ps
from rdance.data.pipeline import host_batches
from rdance.data.preference_builder import PreferenceSource
from rdance.data.records import BadRecord, PreferenceRecord, write_jsonl
from rdance.world.pairs import PreferencePairs
from tests.data.conftest import FIELD_PROBLEMS, GOOD, IMAGE_PROBLEMS, resolve, write_lines


def png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def records():
    pairs = PreferencePairs(6, seed=2)
    return [pairs[i] for i in range(6)]


def totals(counts: dict) -> dict:
    """A conversion's counts over all its splits (one split: that split's)."""
    return {k: v for k, v in counts.items() if k != "splits"}


def convert_and_read(tmp_path, fmt, manual, **kw):
    counts = ps.convert(fmt, str(manual), str(tmp_path / "tfds"), **kw)
    source = PreferenceSource(str(tmp_path / "tfds"), fmt)
    return totals(counts), [source[i] for i in range(len(source))]


def same(a: PreferenceRecord, b: PreferenceRecord):
    assert (a.prompt, a.label) == (b.prompt, b.label)
    for x, y in zip(a.images, b.images):
        np.testing.assert_array_equal(x, y)


def test_jsonl_with_video_round_trips(tmp_path, records):
    clip = np.stack([records[0].images[0]] * 3)
    original = records[:3] + [PreferenceRecord("a clip", (clip, clip[::-1].copy()), 1, "motion", "why")]
    (tmp_path / "raw").mkdir()
    write_jsonl(original, str(tmp_path / "raw" / "train.jsonl"))
    counts, back = convert_and_read(tmp_path, "jsonl", tmp_path / "raw")
    assert counts == {"written": 4}
    for a, b in zip(original, back):
        same(a, b)
        assert (a.criteria, a.rationale) == (b.criteria, b.rationale)
    assert back[3].images[0].shape == (3, 32, 32, 3)


def test_pickapic_v2_layout(tmp_path, records):
    (tmp_path / "raw" / "train").mkdir(parents=True)
    rows = {"caption": [r.prompt for r in records], "jpg_0": [png(r.images[0]) for r in records],
            "jpg_1": [png(r.images[1]) for r in records],
            "label_0": [float(r.label == 0) for r in records], "label_1": [float(r.label == 1) for r in records]}
    rows["label_0"][5] = rows["label_1"][5] = 0.5  # a tie
    pq.write_table(pa.table(rows), tmp_path / "raw" / "train" / "part-0.parquet")
    counts, back = convert_and_read(tmp_path, "pickapic_v2", tmp_path / "raw")
    assert counts == {"written": 5, "ties": 1}
    for a, b in zip(records[:5], back):
        same(a, b)


def pickapic_rows(records, ties=()):
    """Pick-a-Pic v2's columns for ``records`` (row i a tie when i is in ``ties``)."""
    rows = {"caption": [r.prompt for r in records], "jpg_0": [png(r.images[0]) for r in records],
            "jpg_1": [png(r.images[1]) for r in records],
            "label_0": [0.5 if i in ties else float(r.label == 0) for i, r in enumerate(records)],
            "label_1": [0.5 if i in ties else float(r.label == 1) for i, r in enumerate(records)]}
    return pa.table(rows)


def read_split(tmp_path, fmt, split):
    source = PreferenceSource(str(tmp_path / "tfds"), fmt, split=split)
    return [source[i] for i in range(len(source))]


def test_pickapic_v2_hub_download_keeps_every_split_apart(tmp_path, records):
    """A Hub download holds every split in data/ as <split>-NNNNN-of-NNNNN-<hash>.parquet: each is
    written as its own split (no test row in train), and a split with no record left (all ties)
    is reported by name and left out while the others are written."""
    data = tmp_path / "raw" / "data"
    data.mkdir(parents=True)
    pq.write_table(pickapic_rows(records[:2]), data / "train-00000-of-00002-4f2b8c.parquet")
    pq.write_table(pickapic_rows(records[2:3]), data / "train-00001-of-00002-9d1e07.parquet")
    pq.write_table(pickapic_rows(records[3:4]), data / "validation-00000-of-00001-0a1b2c.parquet")
    test = pickapic_rows(records[4:6] + records[:1])   # its last row unlabelled, as some of the set's are
    test = test.append_column("has_label", pa.array([True, True, False]))
    pq.write_table(test, data / "test-00000-of-00001-3c4d5e.parquet")
    pq.write_table(pickapic_rows(records[:2], ties=(0, 1)), data / "validation_unique-00000-of-00001-6f7a8b.parquet")
    counts = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    assert counts["splits"] == {"test": {"written": 2, "unlabelled": 1}, "train": {"written": 3}, "validation": {"written": 1},
                                "validation_unique": {"ties": 2}}
    assert totals(counts) == {"written": 6, "ties": 2, "unlabelled": 1}
    for split, expected in (("train", records[:3]), ("validation", records[3:4]), ("test", records[4:6])):
        back = read_split(tmp_path, "pickapic_v2", split)
        assert len(back) == len(expected), split
        for a, b in zip(expected, back):   # oriented by pixel content
            same(a, b)
    with pytest.raises(Exception, match="validation_unique"):
        read_split(tmp_path, "pickapic_v2", "validation_unique")
    assert ps.summary(counts) == ("written=6  ties=2  unlabelled=1 [test: written=2  unlabelled=1 | train: written=3 | validation: written=1 | "
                                  "validation_unique: EMPTY, left out: ties=2]")


def test_hub_parquet_conversion_layout_and_metadata_names(tmp_path, records):
    """The Hub's refs/convert/parquet layout (default/<split>/NNNN.parquet) and ImageRewardDB's
    metadata-<split>.parquet name their splits too; loose files are train."""
    from rdance.data.sources import parquet_splits
    root = tmp_path / "raw"
    for rel in ("default/train/0000.parquet", "default/train/0001.parquet", "default/test/0000.parquet",
                "metadata-validation.parquet", "loose.parquet", "data/also-loose.parquet"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    splits = {s: sorted(os.path.relpath(p, root) for p in ps_) for s, ps_ in parquet_splits(str(root)).items()}
    assert splits == {"train": ["data/also-loose.parquet", "default/train/0000.parquet", "default/train/0001.parquet",
                                "loose.parquet"],
                      "test": ["default/test/0000.parquet"], "validation": ["metadata-validation.parquet"]}


def test_no_split_with_a_record_is_one_error_and_writes_nothing(tmp_path, records):
    (tmp_path / "raw").mkdir()
    pq.write_table(pickapic_rows(records[:2], ties=(0, 1)), tmp_path / "raw" / "train-00000-of-00001.parquet")
    with pytest.raises(BadRecord, match=r"no split of .*raw has a record to write: train: ties=2"):
        ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()


def test_hpdv2_layout_gives_balanced_pairs(tmp_path, records):
    (tmp_path / "raw").mkdir()
    cells = lambda r: [{"bytes": png(im), "path": "x.png"} for im in r.images]
    rows = {"prompt": [r.prompt for r in records],
            "image": [cells(r) for r in records],
            "human_preference": [[int(r.label == 0), int(r.label == 1)] for r in records]}
    pq.write_table(pa.table(rows), tmp_path / "raw" / "hpd.parquet")
    counts, back = convert_and_read(tmp_path, "hpdv2", tmp_path / "raw")
    assert counts == {"written": 6}
    for a, b in zip(records, back):
        winner = a.images[a.label]
        np.testing.assert_array_equal(b.images[b.label], winner)


def test_imagerewarddb_pairs_ranked_images(tmp_path, records):
    (tmp_path / "raw").mkdir()
    images = [records[0].images[0], records[0].images[1], records[1].images[0]]
    rows = {"prompt_id": ["p0"] * 3, "prompt": [records[0].prompt] * 3,
            "image": [{"bytes": png(im), "path": ""} for im in images], "rank": [2, 1, 2]}
    pq.write_table(pa.table(rows), tmp_path / "raw" / "irdb.parquet")
    counts, back = convert_and_read(tmp_path, "imagerewarddb", tmp_path / "raw")
    assert counts == {"written": 2, "ties": 1}
    for b in back:  # the rank-1 image wins both of its pairs
        np.testing.assert_array_equal(b.images[b.label], images[1])


def test_bad_records_stop_or_are_skipped_and_counted(tmp_path, records):
    (tmp_path / "raw").mkdir()
    rows = {"caption": [records[0].prompt, "", records[2].prompt],
            "jpg_0": [b"broken", png(records[1].images[0]), png(records[2].images[0])],
            "jpg_1": [png(records[0].images[1]), png(records[1].images[1]), png(records[2].images[1])],
            "label_0": [1.0, 0.0, 1.0], "label_1": [0.0, 1.0, 0.0]}
    pq.write_table(pa.table(rows), tmp_path / "raw" / "p.parquet")
    with pytest.raises(BadRecord, match=r"row 0 of .*p.parquet: image cannot be decoded .*; or pass --skip_bad_records"):
        ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()  # nothing half-written, not even the folder
    counts = totals(ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "lenient"), skip_bad_records=True))
    # the corrupt image, and the empty prompt of row 1
    assert counts == {"bad": 2, "bad/image_unreadable": 1, "bad/empty_prompt": 1, "written": 1}


def test_wrong_layout_names_the_missing_columns(tmp_path):
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "raw" / "x.parquet")
    with pytest.raises(BadRecord, match="not the hpdv2 layout, missing column\\(s\\) prompt, image, human_preference"):
        ps.convert("hpdv2", str(tmp_path / "raw"), str(tmp_path / "out"))


def test_converted_set_feeds_grain_per_host(tmp_path, records):
    (tmp_path / "raw").mkdir()
    write_jsonl(records, str(tmp_path / "raw" / "train.jsonl"))
    ps.convert("jsonl", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    source = PreferenceSource(str(tmp_path / "tfds"), "jsonl")
    it = iter(host_batches(source, global_batch_size=4, num_steps=2, seed=0, transform=lambda r: {"label": np.int32(r.label)},
                           process_index=1, process_count=2))
    assert next(it)["label"].shape == (2,)
    state = it.get_state()
    after = next(it)["label"]
    it2 = iter(host_batches(source, global_batch_size=4, num_steps=2, seed=0, transform=lambda r: {"label": np.int32(r.label)},
                            process_index=1, process_count=2))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["label"], after)
    with pytest.raises(FileNotFoundError, match="no converted pickapic_v2 preference set"):
        PreferenceSource(str(tmp_path / "tfds"), "pickapic_v2")


def test_documented_command_converts_and_reads_back(tmp_path, records):
    """As a user types it: under -m the module is __main__, which TFDS could not resolve."""
    (tmp_path / "raw").mkdir()
    path = str(tmp_path / "raw" / "train.jsonl")
    write_jsonl(records[:2], path)
    with open(path, "a") as f:
        f.write('{"prompt": 123, "images": ["train_images/0000000_0.png"], "label": 1}\n')
    run = subprocess.run([sys.executable, "-m", "rdance.run.preference_set", "--format=jsonl",
                          f"--manual_dir={tmp_path / 'raw'}", f"--data_dir={tmp_path / 'tfds'}", "--skip_bad_records"],
                         cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[-1] == f"written=2  bad=1 (wrong_type=1); read it as tfds:{tmp_path / 'tfds'}:jsonl"
    source = PreferenceSource(str(tmp_path / "tfds"), "jsonl")
    assert len(source) == 2
    for a, b in zip(records, (source[i] for i in range(2))):
        same(a, b)
    assert os.listdir(tmp_path / "tfds") == ["preference_set"]  # the build folder is gone


def test_every_kind_of_bad_jsonl_record_is_skipped_and_counted(tmp_path, data):
    """--skip_bad_records: the good records convert, the bad ones are counted by kind."""
    good = {"prompt": "fine", "images": GOOD, "label": 0, "criteria": None}
    bad = ([entry for entry, _, _ in FIELD_PROBLEMS] +
           [{"prompt": "x", "images": resolve(images, data), "label": 1} for images, _, _ in IMAGE_PROBLEMS] +
           [{"prompt": "x", "images": ["large.png"], "label": 1}])  # 1600 pixels, over the limit of 1500
    write_lines(data, [good, *bad, dict(good, label=1)], name="train.jsonl")
    counts = totals(ps.convert("jsonl", str(data), str(tmp_path / "tfds"), skip_bad_records=True, max_image_pixels=1500))
    kinds = collections.Counter(k for *_, k in FIELD_PROBLEMS + IMAGE_PROBLEMS + [("", "", "too_many_pixels")])
    assert counts == {"written": 2, "bad": len(bad), **{f"bad/{k}": n for k, n in kinds.items()}}
    source = PreferenceSource(str(tmp_path / "tfds"), "jsonl")
    assert [(source[i].prompt, source[i].label, source[i].criteria) for i in range(len(source))] == [("fine", 0, ""), ("fine", 1, "")]


@pytest.fixture
def data_dir_with_a_set(tmp_path, records):
    """A data dir that already holds a converted set, which a failed conversion must leave alone."""
    (tmp_path / "pickapic").mkdir()
    rows = {"caption": [records[0].prompt], "jpg_0": [png(records[0].images[0])], "jpg_1": [png(records[0].images[1])],
            "label_0": [0.0], "label_1": [1.0]}
    pq.write_table(pa.table(rows), tmp_path / "pickapic" / "p.parquet")
    ps.convert("pickapic_v2", str(tmp_path / "pickapic"), str(tmp_path / "tfds"))
    return tmp_path / "tfds"


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize("entry, flags, message", [
    ({"label": "1"}, {}, r"label must be the integer 0 or 1, got str"),  # caught on opening
    ({"images": [[GOOD[0], "small.png"]]}, {}, r"the frames of images\[0\] differ in size"),  # on reading
    ({"images": ["../outside.png"]}, {}, r"images\[0\] '../outside.png' leads outside the data folder .*; move the "
                                         r"image into that folder, or pass --allow_outside_paths"),
    ({"images": ["large.png"]}, {"max_image_pixels": "1500"},
     r"image file .*large.png has 1600 pixels, over the limit of 1500; shrink it, or raise the limit with --max_image_pixels"),
], ids=["wrong_type", "frame_sizes", "outside_data_folder", "too_many_pixels"])
def test_command_stops_on_a_bad_record_with_one_line_and_writes_nothing(data_dir_with_a_set, data, entry, flags, message):
    """Without --skip_bad_records: one line naming the file, line, field and fix; data_dir as it was."""
    good = {"prompt": "fine", "images": GOOD, "label": 1}
    write_lines(data, [good, dict(good, **entry)], name="train.jsonl")
    before = listing(data_dir_with_a_set)
    options = dict(format="jsonl", manual_dir=str(data), data_dir=str(data_dir_with_a_set), skip_bad_records="false",
                   allow_outside_paths="false", max_image_pixels=str(ps.DEFAULT_MAX_IMAGE_PIXELS), workers="2",
                   ties="drop", weights="dataset", beam_pipeline_options="", beam_records_per_shard="256")
    with flagsaver.as_parsed(**{**options, **flags}), pytest.raises(SystemExit) as stopped:
        ps.main([])
    assert re.fullmatch(r"error: line 2 of .*train\.jsonl: " + message +
                        r".*; or pass --skip_bad_records to skip and count such records", stopped.value.code)
    assert listing(data_dir_with_a_set) == before
    assert len(PreferenceSource(str(data_dir_with_a_set), "pickapic_v2")) == 1


def test_outside_paths_convert_when_allowed_and_a_converted_set_is_kept(tmp_path, data):
    write_lines(data, [{"prompt": "x", "images": ["../outside.png", "link.png"], "label": 1}], name="train.jsonl")
    assert totals(ps.convert("jsonl", str(data), str(tmp_path / "tfds"), allow_outside_paths=True)) == {"written": 1}
    assert PreferenceSource(str(tmp_path / "tfds"), "jsonl")[0].images[0].shape == (4, 4, 3)
    with pytest.raises(FileExistsError, match=r"tfds/preference_set/jsonl/1.1.0 already holds a converted jsonl set; "
                                              r"delete that folder to convert again"):
        ps.convert("jsonl", str(data), str(tmp_path / "tfds"), allow_outside_paths=True)
    assert len(PreferenceSource(str(tmp_path / "tfds"), "jsonl")) == 1


def test_workers_give_the_same_set(tmp_path, records):
    """Decoding on 4 threads writes the records, keys and counts that one thread does (a bad
    record skipped on the way), in source order."""
    rows = pickapic_rows(records * 3).to_pydict()
    rows["jpg_0"][7] = b"broken"
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "raw" / "train-00000-of-00001.parquet")
    sets = {}
    for workers in (1, 4):
        counts = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / f"w{workers}"), skip_bad_records=True,
                            workers=workers)
        raw = PreferenceSource(str(tmp_path / f"w{workers}"), "pickapic_v2").source
        sets[workers] = (counts, [(bytes(raw[i]["prompt"]), [bytes(b) for b in raw[i]["images"]], int(raw[i]["label"]))
                                  for i in range(len(raw))])
    assert sets[1] == sets[4]
    assert totals(sets[4][0]) == {"written": 17, "bad": 1, "bad/image_unreadable": 1}


def test_a_split_over_the_writers_memory_buffer_converts_without_tensorflow(tmp_path, records, monkeypatch):
    """TFDS spills a split larger than its memory buffer (1 GB) to scratch files through
    tf.io.gfile; with no TensorFlow installed that crashed. A 2 kB buffer forces the spill
    wherever TFDS's Shuffler is still used (the builder now writes through its in-order
    scratch file, tests/data/test_conversion_memory.py)."""
    from tensorflow_datasets.core import shuffle
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 2_000)
    (tmp_path / "raw").mkdir()
    write_jsonl(records, str(tmp_path / "raw" / "train.jsonl"))
    counts, back = convert_and_read(tmp_path, "jsonl", tmp_path / "raw")
    assert counts == {"written": 6}
    for a, b in zip(records, back):
        same(a, b)
