import json

import numpy as np
import pytest

from rdance.data.records import BadRecord, JsonlRecords, PreferenceRecord, write_jsonl
from rdance.data.world.pairs import PreferencePairs


def records():
    pairs = PreferencePairs(6, seed=1, size=32)
    out = [pairs[i] for i in range(len(pairs))]
    clip = np.stack([out[0].images[0]] * 3)
    out.append(PreferenceRecord("a video of a red circle", (clip, clip[::-1].copy()), 0, "motion", ""))
    out.append(PreferenceRecord("a single image", (out[1].images[0],), 1))
    return out


def test_jsonl_round_trip_with_pairs_points_and_video(tmp_path):
    original = records()
    path = str(tmp_path / "prefs.jsonl")
    assert write_jsonl(original, path) == len(original)
    loaded = JsonlRecords(path)
    assert len(loaded) == len(original)
    for a, b in zip(original, (loaded[i] for i in range(len(loaded)))):
        assert (a.prompt, a.label, a.criteria, a.rationale, a.kind) == (b.prompt, b.label, b.criteria, b.rationale, b.kind)
        for x, y in zip(a.images, b.images):
            np.testing.assert_array_equal(x, y)
    assert loaded[6].images[0].shape == (3, 32, 32, 3)


def _write_lines(tmp_path, entries):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n")
    return str(path)


@pytest.fixture
def images(tmp_path):
    write_jsonl(records()[:1], str(tmp_path / "good.jsonl"))
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    return ["good_images/0000000_0.png", "good_images/0000000_1.png"]


@pytest.mark.parametrize("entry, message, on_access", [
    ("{not json", r"line 2 of .*bad.jsonl: not valid JSON", False),
    ({"prompt": "x", "label": 1}, r"line 2 .*missing field\(s\) images", False),
    ({"prompt": "  ", "images": "IMAGES", "label": 1}, r"record 1 \(line 2 .*\): empty prompt", True),
    ({"prompt": "x", "images": "IMAGES", "label": 3}, r"record 1 .*label 3 out of range", True),
    ({"prompt": "x", "images": ["missing.png"], "label": 1}, r"record 1 .*missing.png does not exist", True),
    ({"prompt": "x", "images": ["corrupt.png"], "label": 1}, r"record 1 .*corrupt.png cannot be read", True),
])
def test_bad_records_are_named_or_skipped_and_counted(tmp_path, images, entry, message, on_access):
    if isinstance(entry, dict) and entry.get("images") == "IMAGES":
        entry = dict(entry, images=images)
    good = {"prompt": "fine", "images": images, "label": 0}
    path = _write_lines(tmp_path, [good, entry, good])
    if on_access:
        source = JsonlRecords(path)
        assert source[0].prompt == "fine"
        with pytest.raises(BadRecord, match=message):
            source[1]
    else:
        with pytest.raises(BadRecord, match=message):
            JsonlRecords(path)
        skipping = JsonlRecords(path, skip_bad_records=True)
        assert (len(skipping), skipping.skipped) == (2, 1)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        JsonlRecords(str(tmp_path / "nope.jsonl"))
