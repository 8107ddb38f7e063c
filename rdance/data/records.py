"""Preference records and the documented JSONL + image-folder format.

A record is a prompt, one image (pointwise) or two (pairwise), a label, and optional criteria
and rationale. An image is an RGB array [H, W, 3] uint8, or a video clip [T, H, W, 3].

JSONL format, one record per line, image paths relative to the JSONL file's folder:

    {"prompt": "two red circles", "images": ["a.png", "b.png"], "label": 1,
     "criteria": "...", "rationale": "..."}

``label`` is the index of the preferred image for a pair, and 1 (good) or 0 (bad) for a single
image. A video is a list of frame paths in place of one image path.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Iterable

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError


class BadRecord(ValueError):
    """A record that cannot be used; the message names the record, the file and the problem."""


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    prompt: str
    images: tuple[np.ndarray, ...]
    label: int
    criteria: str = ""
    rationale: str = ""

    @property
    def kind(self) -> str:
        return "pair" if len(self.images) == 2 else "point"


def validate(record: PreferenceRecord, where: str) -> PreferenceRecord:
    if not isinstance(record.prompt, str) or not record.prompt.strip():
        raise BadRecord(f"{where}: empty prompt")
    if len(record.images) not in (1, 2):
        raise BadRecord(f"{where}: {len(record.images)} images; a record has 1 (pointwise) or 2 (pairwise)")
    for i, image in enumerate(record.images):
        if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise BadRecord(f"{where}: image {i} is {image.dtype} {image.shape}; expected uint8 "
                            "[H, W, 3] or a clip [T, H, W, 3]")
    if record.label not in (0, 1):
        raise BadRecord(f"{where}: label {record.label!r} out of range; use 0 or 1")
    return record


def _read_image(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class JsonlRecords:
    """Random access to a JSONL + image-folder preference set; images are decoded on access.

    Fields are checked for every line when the file is opened (cheap); images are read when a
    record is accessed. With ``skip_bad_records`` a record that fails either check is dropped,
    counted and logged instead of stopping the job.
    """

    def __init__(self, path: str, skip_bad_records: bool = False):
        if not os.path.exists(path):
            raise FileNotFoundError(f"preference file {path} does not exist")
        self.path, self.root, self.skip = path, os.path.dirname(os.path.abspath(path)), skip_bad_records
        self.entries: list[tuple[int, dict]] = []
        self.skipped = 0
        with open(path) as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"record on line {line_number} of {path}"
                try:
                    self.entries.append((line_number, self._check_fields(line, where)))
                except BadRecord as e:
                    self._skip_or_raise(e)
        if not self.entries:
            raise BadRecord(f"{path} holds no usable records ({self.skipped} skipped)")

    def _skip_or_raise(self, error: BadRecord) -> None:
        if not self.skip:
            raise error
        self.skipped += 1
        logging.warning("skipping (data.skip_bad_records=True): %s", error)

    def _check_fields(self, line: str, where: str) -> dict:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRecord(f"{where}: not valid JSON ({e.msg})") from None
        missing = [k for k in ("prompt", "images", "label") if k not in entry]
        if missing:
            raise BadRecord(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(entry["images"], list) or not entry["images"]:
            raise BadRecord(f"{where}: 'images' must be a list of 1 or 2 paths (or frame lists)")
        return entry

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> PreferenceRecord:
        line_number, entry = self.entries[index]
        where = f"record {index} (line {line_number} of {self.path})"
        images = tuple(self._load(item, where) for item in entry["images"])
        record = PreferenceRecord(prompt=entry["prompt"], images=images, label=entry["label"],
                                  criteria=entry.get("criteria", ""), rationale=entry.get("rationale", ""))
        return validate(record, where)

    def _load(self, item: Any, where: str) -> np.ndarray:
        if isinstance(item, list):  # a video clip: frame paths
            return np.stack([self._load(frame, where) for frame in item])
        path = os.path.join(self.root, item)
        try:
            return _read_image(path)
        except FileNotFoundError:
            raise BadRecord(f"{where}: image file {path} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise BadRecord(f"{where}: image file {path} cannot be read ({e})") from None


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
