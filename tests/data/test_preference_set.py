"""Every source format converts to ArrayRecord and reads back equal; bad records as specified."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rdance.data import preference_set as ps
from rdance.data.pipeline import host_batches
from rdance.data.records import BadRecord, PreferenceRecord, write_jsonl
from rdance.data.world.pairs import PreferencePairs


def png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def records():
    pairs = PreferencePairs(6, seed=2)
    return [pairs[i] for i in range(6)]


def convert_and_read(tmp_path, fmt, manual, **kw):
    counts = ps.convert(fmt, str(manual), str(tmp_path / "tfds"), **kw)
    source = ps.PreferenceSource(str(tmp_path / "tfds"), fmt)
    return counts, [source[i] for i in range(len(source))]


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
    with pytest.raises(BadRecord, match=r"row 0 of .*p.parquet: image cannot be decoded"):
        ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "strict"))
    assert not (tmp_path / "strict" / "preference_set" / "pickapic_v2" / "1.0.0").exists()
    counts = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "lenient"), skip_bad_records=True)
    assert counts == {"bad": 2, "written": 1}  # the corrupt image, and the empty prompt of row 1


def test_wrong_layout_names_the_missing_columns(tmp_path):
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "raw" / "x.parquet")
    with pytest.raises(BadRecord, match="not the hpdv2 layout, missing column\\(s\\) prompt, image, human_preference"):
        ps.convert("hpdv2", str(tmp_path / "raw"), str(tmp_path / "out"))


def test_converted_set_feeds_grain_per_host(tmp_path, records):
    (tmp_path / "raw").mkdir()
    write_jsonl(records, str(tmp_path / "raw" / "train.jsonl"))
    ps.convert("jsonl", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    source = ps.PreferenceSource(str(tmp_path / "tfds"), "jsonl")
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
        ps.PreferenceSource(str(tmp_path / "tfds"), "pickapic_v2")
