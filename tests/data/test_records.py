import numpy as np
import pytest

from rdance.data.records import BadRecord, JsonlRecords, PreferenceRecord, pixel_limit, write_jsonl
from rdance.world.pairs import PreferencePairs
from tests.data.conftest import FIELD_PROBLEMS, GOOD, IMAGE_PROBLEMS, resolve, write_lines


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


@pytest.mark.parametrize("entry, message, kind", FIELD_PROBLEMS, ids=[k for *_, k in FIELD_PROBLEMS])
def test_bad_fields_are_named_when_opened_or_skipped_and_counted(data, entry, message, kind):
    good = {"prompt": "fine", "images": GOOD, "label": 0}
    path = write_lines(data, [good, entry, good])
    with pytest.raises(BadRecord, match=r"^line 2 of .*bad\.jsonl: " + message) as caught:
        JsonlRecords(path)
    assert "\n" not in str(caught.value) and caught.value.kind == kind
    skipping = JsonlRecords(path, skip_bad_records=True)
    assert (len(skipping), dict(skipping.skipped)) == (2, {kind: 1})
    assert skipping[1].prompt == "fine" and skipping.where(1).startswith("line 3 of")


@pytest.mark.parametrize("images, message, kind", IMAGE_PROBLEMS, ids=[k for *_, k in IMAGE_PROBLEMS])
def test_bad_images_are_named_on_access(data, images, message, kind):
    images = resolve(images, data)
    good = {"prompt": "fine", "images": GOOD, "label": 0}
    source = JsonlRecords(write_lines(data, [good, {"prompt": "x", "images": images, "label": 1}, good]))
    with pytest.raises(BadRecord, match=r"^line 2 of .*bad\.jsonl: " + message) as caught:
        source[1]
    assert "\n" not in str(caught.value) and caught.value.kind == kind
    assert source[0].prompt == source[2].prompt == "fine"


def test_outside_paths_are_read_when_allowed(data):
    entry = {"prompt": "x", "images": ["../outside.png", "link.png"], "label": 1}
    source = JsonlRecords(write_lines(data, [entry]), allow_outside_paths=True)
    assert [im.shape for im in source[0].images] == [(4, 4, 3), (4, 4, 3)]


def test_pixel_limit_names_the_file_its_size_and_the_flag(data):
    source = JsonlRecords(write_lines(data, [{"prompt": "x", "images": GOOD, "label": 1}]))
    with pixel_limit(1000):
        with pytest.raises(BadRecord, match=r"^line 1 of .*bad\.jsonl: image file .*0000000_0.png has 1024 pixels, "
                                            r"over the limit of 1000; shrink it, or raise the limit with --max_image_pixels"):
            source[0]
    assert source[0].images[0].shape == (32, 32, 3)  # PIL's own limit again outside


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        JsonlRecords(str(tmp_path / "nope.jsonl"))
