"""Bad JSONL records of every kind the conversion must name (or skip and count), and the data
folder they point into."""
import json
import os

import pytest
from PIL import Image

from rdance.data.records import write_jsonl
from rdance.world.pairs import PreferencePairs


def write_lines(folder, entries, name="bad.jsonl"):
    """A JSONL file in ``folder``: str and bytes lines as given, dicts as JSON."""
    path = folder / name
    lines = [e if isinstance(e, bytes) else (e if isinstance(e, str) else json.dumps(e)).encode() for e in entries]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture
def data(tmp_path):
    """The data folder: a good pair's 32x32 images (GOOD), a corrupt image, a 16x8 frame, a
    40x40 image; and an image outside it, reached by ../, by an absolute path and by a symlink."""
    folder = tmp_path / "data"
    folder.mkdir()
    pairs = PreferencePairs(1, seed=1, size=32)
    write_jsonl([pairs[0]], str(folder / "good.jsonl"))
    (folder / "corrupt.png").write_bytes(b"not a png at all")
    Image.new("RGB", (16, 8)).save(folder / "small.png")
    Image.new("RGB", (40, 40)).save(folder / "large.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    return folder


GOOD = ["good_images/0000000_0.png", "good_images/0000000_1.png"]
FIELD_PROBLEMS = [  # (a line, the message, the kind counted when skipped): caught when the file is opened
    (b'{"prompt": "caf\xe9", "images": [], "label": 1}', r"not UTF-8 \(byte 0xe9 at column 16\); save the file as UTF-8", "not_utf8"),
    ("{not json", r"not valid JSON \(Expecting property name .* at column 2\); write one JSON object per line", "not_json"),
    ("[1, 2]", r"a JSON list, not an object; write one JSON object per line", "not_an_object"),
    ({"prompt": "x", "label": 1}, r"missing field\(s\) images; a record needs prompt, images and label", "missing_field"),
    ({"prompt": 123, "images": GOOD, "label": 1}, r'prompt must be a string, got int 123; quote it: "prompt": "123"', "wrong_type"),
    ({"prompt": "  ", "images": GOOD, "label": 1}, r"empty prompt; give the text", "empty_prompt"),
    ({"prompt": "x", "images": "a.png", "label": 1}, r"images must be a list of 1 or 2 image paths, got str", "wrong_type"),
    ({"prompt": "x", "images": GOOD * 2, "label": 1}, r"images has 4 entries; a record has 1 .* or 2", "image_count"),
    ({"prompt": "x", "images": [7], "label": 1}, r"images\[0\] must be an image path .*, got int 7", "wrong_type"),
    ({"prompt": "x", "images": [[]], "label": 1}, r"images\[0\] is a video with no frames; list its frame paths", "no_frames"),
    ({"prompt": "x", "images": [["a.png", 5]], "label": 1}, r"images\[0\]\[1\] must be a frame path, got int 5", "wrong_type"),
    ({"prompt": "x", "images": GOOD, "label": 3}, r"label 3 out of range; use 0 or 1", "label_out_of_range"),
    ({"prompt": "x", "images": GOOD, "label": "1"}, r'label must be the integer 0 or 1, got str "1"', "wrong_type"),
    ({"prompt": "x", "images": GOOD, "label": 1, "criteria": 5}, r"criteria must be a string, got int 5", "wrong_type"),
    ({"prompt": "x", "images": GOOD, "label": 1, "rationale": ["a"]}, r'rationale must be a string, got list \["a"\]', "wrong_type"),
]
IMAGE_PROBLEMS = [  # (images, the message, the kind): caught when the image is read; ABSOLUTE: outside.png by its absolute path
    (["missing.png"], r"image file .*data/missing.png does not exist; fix the path", "image_missing"),
    (["corrupt.png"], r"image file .*corrupt.png cannot be read \(.*\); replace it with a readable PNG", "image_unreadable"),
    ([[GOOD[0], "small.png"]], r"the frames of images\[0\] differ in size \(16x8, 32x32\); resize them", "frame_sizes"),
    (["../outside.png"], r"images\[0\] '../outside.png' leads outside the data folder .*data \(to .*outside.png\); "
                         r"move the image into that folder, or pass --allow_outside_paths", "outside_data_folder"),
    (["ABSOLUTE"], r"images\[0\] '/.*outside.png' leads outside the data folder", "outside_data_folder"),
    ([GOOD[0], "link.png"], r"images\[1\] 'link.png' leads outside the data folder .* \(to .*outside.png\)", "outside_data_folder"),
]


def resolve(images, folder):
    """IMAGE_PROBLEMS images with ABSOLUTE replaced by the outside image's absolute path."""
    return [str(folder.parent / "outside.png") if i == "ABSOLUTE" else i for i in images]
