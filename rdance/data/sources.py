"""Readers for the public preference sets' local parquet files, yielding PreferenceRecords.

Each reader names the columns it expects and fails with the columns it found, so a file of
another layout is caught on its first row group, not mid-conversion.

Splits are found as the datasets publish them (:func:`parquet_splits`): a Hub download
(``data/<split>-NNNNN-of-NNNNN[-<hash>].parquet``), the Hub's parquet conversion
(``default/<split>/NNNN.parquet``), ImageRewardDB's ``metadata-<split>.parquet``, or folders named
after their split; every split the files name is kept as that split.

- Pick-a-Pic v2: ``caption``, ``jpg_0``, ``jpg_1`` (image bytes), ``label_0``, ``label_1``
  (1/0, or 0.5/0.5 for a tie; ties carry no preference and are skipped and counted), and where
  the file has it ``has_label`` (rows without a label are skipped and counted as ``unlabelled``).
- HPDv2: ``prompt``, ``image`` (a list of images), ``human_preference`` (a list of 0/1, the
  preferred image marked 1). Records with more than two images give one pair per other image.
- ImageRewardDB: one image per row, ``prompt_id``, ``prompt``, ``image``, ``rank`` (1 = best);
  images of one prompt are paired whenever their ranks differ.

An image cell may be raw bytes or a ``{"bytes": ..., "path": ...}`` struct (the Hugging Face
datasets Image encoding).

Readers yield ``(where, make)``: ``make()`` decodes the record and may raise BadRecord, so a
converter can skip one bad record and go on.
"""
from __future__ import annotations

import collections
import glob
import itertools
import os
import re
from typing import Callable, Iterator

import numpy as np

from PIL import Image

from rdance.data.records import BadRecord, PreferenceRecord, decode_image, too_many_pixels

FORMATS = ("jsonl", "pickapic_v2", "hpdv2", "imagerewarddb")
_COLUMNS = {
    "pickapic_v2": ("caption", "jpg_0", "jpg_1", "label_0", "label_1"),
    "hpdv2": ("prompt", "image", "human_preference"),
    "imagerewarddb": ("prompt_id", "prompt", "image", "rank"),
}
_OPTIONAL_COLUMNS = {"pickapic_v2": ("has_label",)}


def parquet_files(folder: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no .parquet files under {folder}; put the dataset's parquet files there")
    return files


# A Hub download names each shard after its split: data/validation_unique-00000-of-00002-1a2b.parquet.
_HUB_SHARD = re.compile(r"^(?P<split>\w+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?\.parquet$")
_METADATA = re.compile(r"^metadata-(?P<split>\w+)\.parquet$")   # ImageRewardDB
_CONTAINERS = {".", "data", "default"}                          # folders that hold splits, not a split


def split_of(path: str, root: str) -> str:
    """The split a parquet file belongs to, from its name, else its folder's name; files directly
    in ``root`` (or in data/, default/) with no split in their name are ``train``."""
    name = os.path.basename(path)
    match = _HUB_SHARD.match(name) or _METADATA.match(name)
    if match:
        return match["split"]
    folder = os.path.basename(os.path.relpath(os.path.dirname(path), root))
    return "train" if folder in _CONTAINERS else re.sub(r"\W", "_", folder)


def parquet_splits(root: str) -> dict[str, list[str]]:
    """{split: its parquet files} for every split under ``root``."""
    splits: dict[str, list[str]] = collections.defaultdict(list)
    for path in parquet_files(root):
        splits[split_of(path, root)].append(path)
    return dict(splits)


def _rows(path: str, fmt: str) -> Iterator[dict]:
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path)
    missing = [c for c in _COLUMNS[fmt] if c not in table.schema_arrow.names]
    if missing:
        raise BadRecord(f"{path}: not the {fmt} layout, missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(table.schema_arrow.names)}", "bad_file")
    optional = [c for c in _OPTIONAL_COLUMNS.get(fmt, ()) if c in table.schema_arrow.names]
    for batch in table.iter_batches(columns=[*_COLUMNS[fmt], *optional], batch_size=256):
        yield from batch.to_pylist()


def _image(cell, where: str) -> np.ndarray:
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise BadRecord(f"{where}: empty image cell", "image_unreadable")
    try:
        return decode_image(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_many_pixels(f"{where}: image", e) from None
    except Exception as e:  # PIL raises several types for corrupt data
        raise BadRecord(f"{where}: image cannot be decoded ({e})", "image_unreadable") from None


class Counter:
    """What a conversion did: records written, skipped as ties, skipped as bad (``bad``, and
    ``bad/KIND`` for each kind of problem, e.g. ``bad/wrong_type``). A split's counter also
    counts into its ``total``."""

    def __init__(self, total: "Counter | None" = None):
        self.counts = collections.Counter()
        self.total = total

    def __getitem__(self, key):
        return self.counts[key]

    def add(self, key: str, n: int = 1):
        self.counts[key] += n
        if self.total is not None:
            self.total.add(key, n)

    def add_bad(self, kind: str, n: int = 1):
        self.add("bad", n)
        self.add(f"bad/{kind}", n)


Lazy = Iterator[tuple[str, Callable[[], PreferenceRecord]]]


def pickapic_v2(paths: list[str], counter: Counter) -> Lazy:
    for path in paths:
        for i, row in enumerate(_rows(path, "pickapic_v2")):
            where = f"row {i} of {path}"
            if row.get("has_label") is False:
                counter.add("unlabelled")
                continue
            if row["label_0"] == row["label_1"]:
                counter.add("ties")
                continue
            yield where, lambda row=row, where=where: PreferenceRecord(
                row["caption"] or "", (_image(row["jpg_0"], where), _image(row["jpg_1"], where)),
                int(row["label_1"] > row["label_0"]))


def hpdv2(paths: list[str], counter: Counter) -> Lazy:
    def pair(row, where, first, second, best):
        prefs, cells = row["human_preference"] or [], row["image"] or []
        if len(prefs) != len(cells) or len(cells) < 2 or sum(prefs) != 1:
            raise BadRecord(f"{where}: expected >= 2 images with exactly one preferred, got "
                            f"{len(cells)} images and human_preference={prefs}", "image_count")
        return PreferenceRecord(row["prompt"] or "", (_image(cells[first], where), _image(cells[second], where)),
                                int(second == best))

    for path in paths:
        for i, row in enumerate(_rows(path, "hpdv2")):
            where = f"row {i} of {path}"
            prefs = row["human_preference"] or [0, 0]
            best = int(np.argmax(prefs))
            for other in (o for o in range(max(len(prefs), 2)) if o != best):
                # Alternate the winner's position so labels are balanced.
                first, second = (best, other) if other % 2 else (other, best)
                yield where, lambda row=row, where=where, f=first, s=second, b=best: pair(row, where, f, s, b)


def imagerewarddb(paths: list[str], counter: Counter) -> Lazy:
    groups: dict = collections.defaultdict(list)
    for path in paths:
        for i, row in enumerate(_rows(path, "imagerewarddb")):
            groups[row["prompt_id"]].append((f"row {i} of {path}", row))
    for prompt_id, rows in groups.items():
        for (wa, a), (wb, b) in itertools.combinations(rows, 2):
            if a["rank"] == b["rank"]:
                counter.add("ties")
                continue
            yield f"{wa} and {wb} (prompt_id {prompt_id})", lambda a=a, b=b, wa=wa, wb=wb: PreferenceRecord(
                a["prompt"] or "", (_image(a["image"], wa), _image(b["image"], wb)), int(b["rank"] < a["rank"]))


def jsonl(path: str, counter: Counter, skip_bad_records: bool = False,
          allow_outside_paths: bool = False) -> Lazy:
    from rdance.data.records import JsonlRecords
    source = JsonlRecords(path, skip_bad_records=skip_bad_records, allow_outside_paths=allow_outside_paths)
    for kind, n in source.skipped.items():
        counter.add_bad(kind, n)
    for i in range(len(source)):
        yield source.where(i), lambda i=i: source[i]


READERS = {"jsonl": jsonl, "pickapic_v2": pickapic_v2, "hpdv2": hpdv2, "imagerewarddb": imagerewarddb}
