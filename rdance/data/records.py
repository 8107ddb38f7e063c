"""Preference records and the documented JSONL + image-folder format.

A record is a prompt, one image (pointwise) or two (pairwise), a label, and optional criteria
and rationale. An image is an RGB array [H, W, 3] uint8, or a video clip [T, H, W, 3].

JSONL format, UTF-8, one record per line, image paths relative to the JSONL file's folder and
inside it (see JsonlRecords):

    {"prompt": "two red circles", "images": ["a.png", "b.png"], "label": 1,
     "criteria": "...", "rationale": "..."}

``label`` is the index of the preferred image for a pair, and 1 (good) or 0 (bad) for a single
image. A video is a list of frame paths in place of one image path.
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import io
import json
import os
import re
import warnings
from typing import Any, Iterable

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError


class BadRecord(ValueError):
    """A record that cannot be used; the message names the record, the file, the problem and the fix.

    ``kind`` names the problem (``wrong_type``, ``not_utf8``, ...) for the counts a converter
    reports; ``bad_file`` marks a whole file that cannot be used, which skipping cannot mend.
    """

    def __init__(self, message: str, kind: str = "bad_record"):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    prompt: str
    images: tuple[np.ndarray, ...]
    label: int
    criteria: str = ""
    rationale: str = ""
    # The source's own encoded bytes of each still image (None where there are none, e.g. a
    # clip): the conversion stores these as they are, never re-encoding (a photo's JPEG grows
    # 4-9x as PNG), and reading decodes them to ``images``.
    encoded: tuple[bytes | None, ...] = dataclasses.field(default=(), compare=False, repr=False)
    # A pair with no preference kept as a soft target (the reward model is taught P(yes) = 0.5
    # in both orders; ``label`` is then 0 and means nothing), and the record's weight in the loss
    # when training is asked to use weights (rm.row_weights): PickScore weights each Pick-a-Pic
    # row by 1 / num_example_per_prompt.
    tie: bool = False
    weight: float = 1.0

    @property
    def kind(self) -> str:
        return "pair" if len(self.images) == 2 else "point"


def validate(record: PreferenceRecord, where: str) -> PreferenceRecord:
    if not isinstance(record.prompt, str):
        raise _wrong_type(where, "prompt", "a string", record.prompt)
    if not record.prompt.strip():
        raise BadRecord(f"{where}: empty prompt; give the text the images were made for", "empty_prompt")
    for field in ("criteria", "rationale"):
        if not isinstance(getattr(record, field), str):
            raise _wrong_type(where, field, "a string", getattr(record, field))
    if len(record.images) not in (1, 2):
        raise BadRecord(f"{where}: {len(record.images)} images; a record has 1 (pointwise) or 2 (pairwise)",
                        "image_count")
    for i, image in enumerate(record.images):
        if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise BadRecord(f"{where}: image {i} is {image.dtype} {image.shape}; expected uint8 "
                            "[H, W, 3] or a clip [T, H, W, 3]", "image_shape")
    if record.label not in (0, 1):
        raise BadRecord(f"{where}: label {record.label!r} out of range; use 0 or 1", "label_out_of_range")
    if record.tie and len(record.images) != 2:
        raise BadRecord(f"{where}: a tie needs two images, got {len(record.images)}", "image_count")
    if not (isinstance(record.weight, (int, float)) and np.isfinite(record.weight) and record.weight >= 0):
        raise BadRecord(f"{where}: weight {record.weight!r} is not a finite number >= 0; fix the dataset's "
                        "weight column, or convert with --weights=none", "bad_weight")
    return record


def _wrong_type(where: str, field: str, expected: str, value: Any) -> BadRecord:
    try:
        shown = json.dumps(value)  # as the user wrote it in the JSONL file
    except TypeError:
        shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    fix = (f'quote it: "{field}": "{value}"' if expected == "a string" and isinstance(value, (int, float))
           else f"write {field} as {expected}")
    return BadRecord(f"{where}: {field} must be {expected}, got {type(value).__name__} {shown}; {fix}", "wrong_type")


# How a message names the settings that loosen a check, in the vocabulary of the command that
# reads the records: the converter's flags by default; training says its config keys instead.
OPTION_NAMES = {"allow_outside_paths": "--allow_outside_paths", "max_image_pixels": "--max_image_pixels"}


def name_options(**names: str) -> None:
    """Called once by an entrypoint whose options are spelt otherwise (e.g. config keys)."""
    unknown = set(names) - set(OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown record options {sorted(unknown)}; known: {sorted(OPTION_NAMES)}")
    OPTION_NAMES.update(names)


@contextlib.contextmanager
def pixel_limit(max_pixels: int):
    """Within, opening an image of more than ``max_pixels`` pixels raises.

    PIL's own decompression-bomb check at our limit: PIL only warns between MAX_IMAGE_PIXELS and
    twice that, so the warning is raised as an error here. Process-wide while it lasts (PIL keeps
    the limit in a module global): meant around a whole conversion, not around one read.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def too_many_pixels(where: str, error: Exception) -> BadRecord:
    """The message for PIL's DecompressionBombError/Warning: the size found and the limit."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(error))
    size = f"has {found[1]} pixels, over the limit of {found[2]}" if found else f"is too large ({error})"
    return BadRecord(f"{where} {size}; shrink it, or raise the limit with {OPTION_NAMES['max_image_pixels']}",
                     "too_many_pixels")


def _read_image(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_image(path: str, where: str) -> np.ndarray:
    """An image file as RGB, or a BadRecord naming ``where`` (the record), the file and the fix."""
    try:
        return _read_image(path)
    except FileNotFoundError:
        raise BadRecord(f"{where}: image file {path} does not exist; fix the path (relative to "
                        "the JSONL file's folder) or add the file", "image_missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_many_pixels(f"{where}: image file {path}", e) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadRecord(f"{where}: image file {path} cannot be read ({e}); replace it with a "
                        "readable PNG or JPEG", "image_unreadable") from None


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


_RECORD_SHAPE = '{"prompt": "...", "images": ["a.png", "b.png"], "label": 0}'


def parse_line(raw: bytes, where: str) -> dict:
    """One JSONL line as a record dict with fields of the documented types, or a BadRecord."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"{where}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                        "save the file as UTF-8", "not_utf8") from None
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRecord(f"{where}: not valid JSON ({e.msg} at column {e.colno}); write one JSON "
                        f"object per line, like {_RECORD_SHAPE}", "not_json") from None
    if not isinstance(entry, dict):
        raise BadRecord(f"{where}: a JSON {type(entry).__name__}, not an object; write one JSON object "
                        f"per line, like {_RECORD_SHAPE}", "not_an_object")
    check_fields(entry, where)
    return entry


def check_fields(entry: dict, where: str) -> None:
    """Each field present and of its type, so a bad record is caught before any image is read."""
    missing = [k for k in ("prompt", "images", "label") if k not in entry]
    if missing:
        raise BadRecord(f"{where}: missing field(s) {', '.join(missing)}; a record needs prompt, "
                        f"images and label, like {_RECORD_SHAPE}", "missing_field")
    prompt, images, label = entry["prompt"], entry["images"], entry["label"]
    if not isinstance(prompt, str):
        raise _wrong_type(where, "prompt", "a string", prompt)
    if not prompt.strip():
        raise BadRecord(f"{where}: empty prompt; give the text the images were made for", "empty_prompt")
    if not isinstance(images, list):
        raise _wrong_type(where, "images", "a list of 1 or 2 image paths", images)
    if len(images) not in (1, 2):
        raise BadRecord(f"{where}: images has {len(images)} entries; a record has 1 (pointwise) or 2 "
                        "(pairwise) images", "image_count")
    for i, item in enumerate(images):
        _check_image_entry(item, f"images[{i}]", where)
    if type(label) is not int:  # a bool is an int too, but `true` is no index
        raise _wrong_type(where, "label", "the integer 0 or 1", label)
    if label not in (0, 1):
        raise BadRecord(f"{where}: label {label} out of range; use 0 or 1 (the preferred image of a "
                        "pair, or good/bad for one image)", "label_out_of_range")
    for field in ("criteria", "rationale"):
        if entry.get(field) is not None and not isinstance(entry[field], str):
            raise _wrong_type(where, field, "a string", entry[field])


def _check_image_entry(item: Any, field: str, where: str) -> None:
    if isinstance(item, str):
        return
    if not isinstance(item, list):
        raise _wrong_type(where, field, "an image path (or a list of frame paths)", item)
    if not item:
        raise BadRecord(f"{where}: {field} is a video with no frames; list its frame paths",
                        "no_frames")
    for t, frame in enumerate(item):
        if not isinstance(frame, str):
            raise _wrong_type(where, f"{field}[{t}]", "a frame path", frame)


class JsonlRecords:
    """Random access to a JSONL + image-folder preference set; images are decoded on access.

    Fields are checked for every line when the file is opened (cheap); images are read when a
    record is accessed. With ``skip_bad_records`` a line that fails the field checks is dropped,
    counted by kind (``skipped``) and logged instead of stopping the job. Image paths must stay
    inside the JSONL file's folder (no ``../``, absolute paths or symlinks out of it) unless
    ``allow_outside_paths``: a shared data set must not make its reader open arbitrary files.
    """

    def __init__(self, path: str, skip_bad_records: bool = False, allow_outside_paths: bool = False,
                 keep_encoded: bool = False):
        if not os.path.exists(path):
            raise FileNotFoundError(f"preference file {path} does not exist")
        self.path, self.root, self.skip = path, os.path.dirname(os.path.abspath(path)), skip_bad_records
        self.allow_outside_paths = allow_outside_paths
        self.keep_encoded = keep_encoded   # the conversion stores still images' file bytes as they are
        self.entries: list[tuple[int, dict]] = []
        self.skipped: collections.Counter = collections.Counter()  # kind of problem -> lines
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is one bad record
            for line_number, raw in enumerate(f, start=1):
                if line_number == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                if not raw.strip():
                    continue
                try:
                    self.entries.append((line_number, parse_line(raw, f"line {line_number} of {path}")))
                except BadRecord as e:
                    self._skip_or_raise(e)
        if not self.entries:
            raise BadRecord(f"{path} holds no usable records ({self.skipped.total()} skipped); fix the "
                            "records named above, or remove the file", "bad_file")

    def _skip_or_raise(self, error: BadRecord) -> None:
        if not self.skip:
            raise error
        self.skipped[error.kind] += 1
        logging.warning("skipping (skip_bad_records=True): %s", error)

    def __len__(self) -> int:
        return len(self.entries)

    def where(self, index: int) -> str:
        return f"line {self.entries[index][0]} of {self.path}"

    def __getitem__(self, index: int) -> PreferenceRecord:
        entry, where = self.entries[index][1], self.where(index)
        images = tuple(self._load(item, f"images[{i}]", where) for i, item in enumerate(entry["images"]))
        encoded = ()
        if self.keep_encoded:
            encoded = tuple(None if isinstance(item, list) else self._file_bytes(item, f"images[{i}]", where)
                            for i, item in enumerate(entry["images"]))
        record = PreferenceRecord(prompt=entry["prompt"], images=images, label=entry["label"],
                                  criteria=entry.get("criteria") or "", rationale=entry.get("rationale") or "",
                                  encoded=encoded)
        return validate(record, where)

    def _file_bytes(self, item: str, field: str, where: str) -> bytes:
        with open(self._inside_root(item, field, where), "rb") as f:
            return f.read()

    def _load(self, item: str | list, field: str, where: str) -> np.ndarray:
        if isinstance(item, list):  # a video clip: frame paths
            frames = [self._load(frame, f"{field}[{t}]", where) for t, frame in enumerate(item)]
            sizes = sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames})
            if len(sizes) > 1:
                raise BadRecord(f"{where}: the frames of {field} differ in size ({', '.join(sizes)}); "
                                "resize them to one size", "frame_sizes")
            return np.stack(frames)
        return read_image(self._inside_root(item, field, where), where)

    def _inside_root(self, item: str, field: str, where: str) -> str:
        path = os.path.join(self.root, item)
        if self.allow_outside_paths:
            return path
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        if os.path.commonpath([real, root]) != root:
            raise BadRecord(f"{where}: {field} {item!r} leads outside the data folder {self.root} "
                            f"(to {real}); move the image into that folder, or pass "
                            f"{OPTION_NAMES['allow_outside_paths']}", "outside_data_folder")
        return path


def write_jsonl(records: Iterable[PreferenceRecord], path: str) -> int:
    """Write records as JSONL with PNG files beside it; written atomically (tmp, then rename)."""
    root = os.path.dirname(os.path.abspath(path))
    image_dir = os.path.splitext(os.path.basename(path))[0] + "_images"
    os.makedirs(os.path.join(root, image_dir), exist_ok=True)
    count = 0
    with open(path + ".tmp", "w") as f:
        for i, record in enumerate(records):
            names = []
            for j, image in enumerate(record.images):
                if image.ndim == 4:
                    frames = [f"{image_dir}/{i:07d}_{j}_{t:03d}.png" for t in range(len(image))]
                    for name, frame in zip(frames, image):
                        Image.fromarray(frame).save(os.path.join(root, name))
                    names.append(frames)
                else:
                    names.append(f"{image_dir}/{i:07d}_{j}.png")
                    Image.fromarray(image).save(os.path.join(root, names[-1]))
            f.write(json.dumps({"prompt": record.prompt, "images": names, "label": int(record.label),
                                "criteria": record.criteria, "rationale": record.rationale}) + "\n")
            count += 1
    os.replace(path + ".tmp", path)
    return count
