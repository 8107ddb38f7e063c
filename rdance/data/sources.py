"""Readers for the public preference sets' local parquet files, yielding PreferenceRecords.

Each reader names the columns it expects and fails with the columns it found, so a file of
another layout is caught on its first row group, not mid-conversion.

Splits are found as the datasets publish them (:func:`parquet_splits`): a Hub download
(``data/<split>-NNNNN-of-NNNNN[-<hash>].parquet``), the Hub's parquet conversion
(``default/<split>/NNNN.parquet``), ImageRewardDB's ``metadata-<split>.parquet``, or folders named
after their split; every split the files name is kept as that split.

- Pick-a-Pic v2: ``caption``, ``jpg_0``, ``jpg_1`` (image bytes), ``label_0``, ``label_1``
  (1/0, or 0.5/0.5 for a tie), and where the file has them ``has_label`` (rows without a label
  are skipped and counted as ``unlabelled``) and ``num_example_per_prompt`` (a row's weight is
  1 / num_example_per_prompt, as PickScore weights its loss).
- HPDv2 as published: ``<split>.json`` arrays (train: ``prompt``, ``image_path`` (or
  ``file_path``), ``human_preference``; test: ``prompt``, ``image_path``, ``rank``) with the images
  in ``<split>/`` or ``<split>.zip``; or parquet with ``prompt``, ``image`` (a list of images) and
  ``human_preference`` or ``rank``.
- ImageRewardDB: one image per row, ``prompt_id``, ``prompt``, ``rank`` (1 = best) and the image:
  ``image`` bytes, or as published ``image_path`` into ``images/<split>/<split>_N.zip``. Rows of
  one prompt are consecutive; they are paired as they stream by, one prompt in memory at a time.

Rankings become pairs as the datasets' authors pair them: every two images of a prompt, the
lower rank wins, equal ranks are ties; with ``human_preference`` the preferred image is paired
with each other one. The winner's side alternates, so labels are balanced.

Ties (:class:`Options`): ``drop`` (the default, as Diffusion-DPO) skips and counts them as
``ties``; ``soft`` keeps them as pairs with ``tie=True`` (a 0.5/0.5 target, as PickScore), counted
as ``soft_ties``. Weights: ``dataset`` (the default) keeps the set's own (Pick-a-Pic's
``num_example_per_prompt``), 1 elsewhere; ``per_prompt`` gives each record 1 / the number of
records of its prompt in its split (a first pass reads the prompts alone, no image); ``none``
gives 1.

An image cell may be raw bytes or a ``{"bytes": ..., "path": ...}`` struct (the Hugging Face
datasets Image encoding).

Readers yield ``(where, prompt, make)``: ``make()`` decodes the record and may raise BadRecord,
so a converter can skip one bad record and go on; ``prompt`` is known without decoding.

A reader's source is a list of files, or of :class:`Part`\ s of files (a parquet row group, a
range of a JSON array's elements or of a JSONL file's records): :func:`shards` cuts a split's
files into pieces that workers read alone (the Beam path, rdance.data.preference_beam), whose
records, read one after the other, are the split's records in the same order.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import itertools
import os
import re
from typing import Callable, Iterator

import numpy as np

from PIL import Image

from rdance.data.files import ImageFiles, json_array
from rdance.data.records import BadRecord, PreferenceRecord, decode_image, too_many_pixels

FORMATS = ("jsonl", "pickapic_v2", "hpdv2", "imagerewarddb")
_COLUMNS = {   # every one of these, and at least one of each tuple in _ONE_OF
    "pickapic_v2": ("caption", "jpg_0", "jpg_1", "label_0", "label_1"),
    "hpdv2": ("prompt", "image"),
    "imagerewarddb": ("prompt_id", "prompt", "rank"),
}
_ONE_OF = {"hpdv2": [("human_preference", "rank")], "imagerewarddb": [("image", "image_path")]}
_OPTIONAL_COLUMNS = {"pickapic_v2": ("has_label", "num_example_per_prompt")}
_IMAGE_COLUMNS = {"jpg_0", "jpg_1", "image"}   # left unread by a pass over the prompts
TIES = ("drop", "soft")
WEIGHTS = ("dataset", "per_prompt", "none")


@dataclasses.dataclass(frozen=True)
class Options:
    """How a reader treats ties and weights (see the module docstring); ``text_only`` leaves the
    image columns unread, for a pass that needs only each record's prompt."""
    ties: str = "drop"
    weights: str = "dataset"
    text_only: bool = False

    def __post_init__(self):
        if self.ties not in TIES:
            raise ValueError(f"--ties={self.ties!r}; use one of {', '.join(TIES)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"--weights={self.weights!r}; use one of {', '.join(WEIGHTS)}")


@dataclasses.dataclass(frozen=True)
class Part:
    """A piece of one source file: a parquet ``row_group``, or the elements (JSON array) or
    records (JSONL) ``start`` to ``stop``; the whole file where these are left out."""
    path: str
    row_group: int | None = None
    start: int = 0
    stop: int | None = None


def as_part(source: "str | Part") -> Part:
    return source if isinstance(source, Part) else Part(source)


def shards(fmt: str, source, records_per_shard: int = 256, skip_bad_records: bool = False,
           allow_outside_paths: bool = False) -> list[tuple[Part, ...]]:
    """A split's ``source`` (its files; for ``jsonl`` its one file) cut into shards that workers
    read alone, in order: a parquet file's row groups (one shard each), a JSON array's or JSONL
    file's elements ``records_per_shard`` at a time. ImageRewardDB pairs the rows of a prompt
    wherever they lie, so its files are read as one shard (its decoding still spreads out
    only within that shard's worker)."""
    if fmt == "jsonl":
        from rdance.data.records import JsonlRecords
        count = len(JsonlRecords(source, skip_bad_records=skip_bad_records, allow_outside_paths=allow_outside_paths))
        return [(Part(source, start=a, stop=min(a + records_per_shard, count)),)
                for a in range(0, count, records_per_shard)]
    if fmt == "imagerewarddb":
        return [tuple(Part(path) for path in source)]
    import pyarrow.parquet as pq
    pieces: list[tuple[Part, ...]] = []
    for path in source:
        if path.endswith(".json"):
            count = sum(1 for _ in json_array(path))
            pieces += [(Part(path, start=a, stop=min(a + records_per_shard, count)),)
                       for a in range(0, count, records_per_shard)]
        else:
            pieces += [(Part(path, row_group=g),) for g in range(pq.ParquetFile(path).metadata.num_row_groups)]
    return pieces


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


def find_splits(fmt: str, root: str) -> dict[str, list[str]]:
    """{split: its files}: HPDv2's published ``<split>.json`` files where there are any, else
    the parquet files (:func:`parquet_splits`)."""
    if fmt == "hpdv2":
        published = {name[:-5]: [os.path.join(root, name)] for name in sorted(os.listdir(root))
                     if re.fullmatch(r"\w+\.json", name)}
        if published:
            return published
    return parquet_splits(root)


def parquet_splits(root: str) -> dict[str, list[str]]:
    """{split: its parquet files} for every split under ``root``."""
    splits: dict[str, list[str]] = collections.defaultdict(list)
    for path in parquet_files(root):
        splits[split_of(path, root)].append(path)
    return dict(splits)


def _rows(path: str, fmt: str, text_only: bool = False, row_group: int | None = None) -> Iterator[tuple[int, dict]]:
    """(row number in the file, row) for the file's rows, or for one of its row groups."""
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path)
    names = table.schema_arrow.names
    missing = [c for c in _COLUMNS[fmt] if c not in names]
    missing += [" or ".join(group) for group in _ONE_OF.get(fmt, []) if not set(group) & set(names)]
    if missing:
        raise BadRecord(f"{path}: not the {fmt} layout, missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(names)}", "bad_file")
    present = [c for group in _ONE_OF.get(fmt, []) for c in group if c in names]
    optional = [c for c in _OPTIONAL_COLUMNS.get(fmt, ()) if c in names]
    columns = [*_COLUMNS[fmt], *present, *optional]
    if text_only and fmt != "hpdv2":   # HPDv2's parquet image list gives the image count
        columns = [c for c in columns if c not in _IMAGE_COLUMNS]
    groups = list(range(table.metadata.num_row_groups)) if row_group is None else [row_group]
    if not groups:
        return
    first = sum(table.metadata.row_group(g).num_rows for g in range(groups[0]))
    for i, row in enumerate((row for batch in table.iter_batches(columns=columns, batch_size=64, row_groups=groups)
                             for row in batch.to_pylist()), start=first):
        yield i, row


def _image(cell, where: str) -> tuple[np.ndarray, bytes]:
    """(the decoded image, its encoded bytes as the dataset stores them)."""
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise BadRecord(f"{where}: empty image cell", "image_unreadable")
    try:
        return decode_image(data), data
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_many_pixels(f"{where}: image", e) from None
    except Exception as e:  # PIL raises several types for corrupt data
        raise BadRecord(f"{where}: image cannot be decoded ({e})", "image_unreadable") from None


def _pair(prompt: str, first: tuple[np.ndarray, bytes], second: tuple[np.ndarray, bytes], label: int,
          tie: bool = False, weight: float = 1.0) -> PreferenceRecord:
    return PreferenceRecord(prompt, (first[0], second[0]), label, encoded=(first[1], second[1]), tie=tie,
                            weight=weight)


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


Lazy = Iterator[tuple[str, str, Callable[[], PreferenceRecord]]]


def _pickapic_weight(row: dict, where: str, options: Options) -> float:
    count = row.get("num_example_per_prompt")
    if options.weights != "dataset" or count is None:
        return 1.0
    if not isinstance(count, (int, float)) or count <= 0:
        raise BadRecord(f"{where}: num_example_per_prompt={count!r}, not a count >= 1; fix the row, or "
                        "convert with --weights=none or --weights=per_prompt", "bad_weight")
    return 1.0 / count


def pickapic_v2(paths: list, counter: Counter, root: str, options: Options = Options()) -> Lazy:
    for part in map(as_part, paths):
        path = part.path
        for i, row in _rows(path, "pickapic_v2", options.text_only, part.row_group):
            where = f"row {i} of {path}"
            if row.get("has_label") is False:
                counter.add("unlabelled")
                continue
            tie = row["label_0"] == row["label_1"]
            if tie and options.ties == "drop":
                counter.add("ties")
                continue
            if tie:
                counter.add("soft_ties")
            yield where, row["caption"] or "", lambda row=row, where=where, tie=tie: _pair(
                row["caption"] or "", _image(row["jpg_0"], where), _image(row["jpg_1"], where),
                0 if tie else int(row["label_1"] > row["label_0"]), tie, _pickapic_weight(row, where, options))


def ranked_pairs(ranks: list, counter: Counter, ties: str = "drop") -> Iterator[tuple[int, int, int, bool]]:
    """(first, second, label, tie) for every two items (lower rank wins; label 1 when ``second``
    wins), the winner's side alternating; equal ranks are ties: counted and skipped (``drop``) or
    yielded with tie=True and label 0 (``soft``)."""
    made = 0
    for a, b in itertools.combinations(range(len(ranks)), 2):
        if ranks[a] == ranks[b]:
            if ties == "soft":
                counter.add("soft_ties")
                yield a, b, 0, True
            else:
                counter.add("ties")
            continue
        winner, loser = (a, b) if ranks[a] < ranks[b] else (b, a)
        yield (loser, winner, 1, False) if made % 2 else (winner, loser, 0, False)
        made += 1


def _hpdv2_ranks(row: dict, count: int, where: str) -> tuple[list, bool]:
    """(ranks, whether equal ranks are ties): from ``rank``, else from ``human_preference`` (the
    one preferred image first, the others equal behind it, so only pairs with the preferred
    image are made: its other images were not judged against each other, no tie)."""
    if row.get("rank") is not None:
        ranks, judged = list(row["rank"]), True
    else:
        prefs = list(row.get("human_preference") or [])
        if len(prefs) != count or sum(prefs) != 1:
            raise BadRecord(f"{where}: expected a rank per image, or human_preference with exactly one "
                            f"preferred, for {count} images; got human_preference={prefs}", "image_count")
        ranks, judged = [0 if p else 1 for p in prefs], False
    if len(ranks) != count or count < 2:
        raise BadRecord(f"{where}: {count} images and {len(ranks)} ranks; a record needs two or more "
                        "images, one rank each", "image_count")
    return ranks, judged


def hpdv2(source: list, counter: Counter, root: str, options: Options = Options()) -> Lazy:
    """HPDv2 records from its published ``<split>.json`` (images by path) or from parquet."""
    files = ImageFiles(root)
    for part in map(as_part, source):
        path = part.path
        is_json = path.endswith(".json")
        split = os.path.splitext(os.path.basename(path))[0]
        rows = (itertools.islice(enumerate(json_array(path)), part.start, part.stop) if is_json
                else _rows(path, "hpdv2", row_group=part.row_group))
        for i, row in rows:
            where = f"{'element' if is_json else 'row'} {i} of {path}"
            cells = (row.get("image_path") or row.get("file_path") or []) if is_json else (row["image"] or [])
            if not isinstance(cells, list):
                raise BadRecord(f"{where}: image_path is a {type(cells).__name__}, not a list of images", "wrong_type")
            prompt = row.get("prompt") or ""
            try:
                ranks, judged = _hpdv2_ranks(row, len(cells), where)
            except BadRecord as e:   # a bad record, skipped or not like every other
                yield where, prompt, functools.partial(_raise, e)
                continue
            if not is_json:
                def image(k, row=row, where=where):
                    return _image(row["image"][k], where)
            else:
                def image(k, cells=cells, where=where):
                    name = cells[k] if "/" in cells[k] else f"{split}/{cells[k]}"
                    return _image(files.read(name, where), where)
            for first, second, label, tie in ranked_pairs(ranks, counter, options.ties if judged else "drop"):
                yield where, prompt, lambda f=first, s=second, label=label, tie=tie, image=image, prompt=prompt: _pair(
                    prompt, image(f), image(s), label, tie)


def _raise(error: Exception):
    raise error


def _consecutive_groups(rows: Iterator[tuple[str, dict]], key: str) -> Iterator[list[tuple[str, dict]]]:
    for _, group in itertools.groupby(rows, key=lambda item: item[1][key]):
        yield list(group)


def imagerewarddb(paths: list, counter: Counter, root: str, options: Options = Options()) -> Lazy:
    """Pairs of each prompt's images as its rows stream by (one prompt in memory at a time)."""
    files = ImageFiles(root)

    def image(row, where):
        data = row["image"] if row.get("image") is not None else files.read(row["image_path"], where)
        return _image(data, where)

    rows = ((f"row {i} of {path}", row) for path in (as_part(p).path for p in paths)
            for i, row in _rows(path, "imagerewarddb", options.text_only))
    for group in _consecutive_groups(rows, "prompt_id"):
        prompt_id = group[0][1]["prompt_id"]
        for first, second, label, tie in ranked_pairs([row["rank"] for _, row in group], counter, options.ties):
            (wa, a), (wb, b) = group[first], group[second]
            yield f"{wa} and {wb} (prompt_id {prompt_id})", a["prompt"] or "", \
                lambda a=a, b=b, wa=wa, wb=wb, label=label, tie=tie: _pair(
                    a["prompt"] or "", image(a, wa), image(b, wb), label, tie)


def jsonl(path: "str | Part", counter: Counter, skip_bad_records: bool = False,
          allow_outside_paths: bool = False) -> Lazy:
    """The records of a JSONL file, or of its Part (whose first Part counts the lines skipped
    when the file is read)."""
    from rdance.data.records import JsonlRecords
    part = as_part(path)
    source = JsonlRecords(part.path, skip_bad_records=skip_bad_records, allow_outside_paths=allow_outside_paths,
                          keep_encoded=True)
    if part.start == 0:
        for kind, n in source.skipped.items():
            counter.add_bad(kind, n)
    for i in range(part.start, len(source) if part.stop is None else min(part.stop, len(source))):
        yield source.where(i), source.entries[i][1]["prompt"], lambda i=i: source[i]


def prompt_counts(items: Lazy) -> collections.Counter:
    """How many records each prompt has among ``items`` (nothing decoded): the per_prompt
    weights' denominators."""
    return collections.Counter(prompt for _, prompt, _ in items)


READERS = {"jsonl": jsonl, "pickapic_v2": pickapic_v2, "hpdv2": hpdv2, "imagerewarddb": imagerewarddb}
