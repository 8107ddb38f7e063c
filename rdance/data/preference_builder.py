"""The TFDS builder behind ``python -m rdance.run.preference_set``, and its example encoding.

A module of its own because TFDS finds a builder's metadata through the module that defines
the class: under ``python -m rdance.run.preference_set`` that module is ``__main__``, which
TFDS cannot resolve, so the class must live in a module that is only ever imported.

``manual_dir`` holds the raw files: for parquet formats the dataset's files as published, each
split kept as its own (rdance.data.sources.parquet_splits: a Hub download folder, the Hub's
parquet conversion, ``metadata-<split>.parquet``, or one folder per split; files with no split
in their name or folder are ``train``); for ``jsonl``, ``train.jsonl`` / ``test.jsonl`` with
their images (see rdance.data.records). Images are stored as PNG/JPEG bytes and decoded on
read, so neither building nor reading needs TensorFlow; the public sets' images are stored in
their own encoding, as the dataset holds them (decoded once to check them, never re-encoded). A split in which no record survives
(all ties, or every record skipped) is left out and reported with its counts; the others are
written.

Version 1.1.0 stores each record's ``tie`` (a pair kept as a 0.5/0.5 target) and ``weight``;
sets written as 1.0.0 (before them) are still read, as records with no tie and weight 1.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import os
import struct
import uuid
from concurrent import futures
from typing import Callable, Iterable, Iterator

import numpy as np
from absl import logging

from rdance.data import sources
from rdance.data.records import BadRecord, PreferenceRecord, decode_image, encode_png, validate


def tfds():
    import tensorflow_datasets  # the `data` extra; only conversion and reading need it
    return tensorflow_datasets


class _LocalFiles:
    """What TFDS's shuffler asks of ``tf.io.gfile`` and ``tf.errors``, on local files."""
    class io:  # noqa: N801 (mirrors tf.io)
        class gfile:  # noqa: N801
            GFile = staticmethod(open)
            exists = staticmethod(os.path.exists)
            remove = staticmethod(os.remove)

    class errors:  # noqa: N801
        class ResourceExhaustedError(OSError):
            message = ""


def _spill_without_tensorflow() -> None:
    """TFDS's writer holds a split in memory up to 1 GB, then spills it to bucket files through
    ``tf.io.gfile``: without TensorFlow, which conversion must not need, any split over 1 GB
    crashed with ModuleNotFoundError. The buckets are scratch files in the local build folder,
    so plain files serve."""
    try:
        import tensorflow  # noqa: F401 (present: TFDS's own path works)
    except ImportError:
        from tensorflow_datasets.core import shuffle
        shuffle.tf = _LocalFiles


class _InOrder:
    """TFDS's Shuffler for a split whose examples come in key order and are kept in that order
    (``disable_shuffling``): examples go to one scratch file as they come and are read back in
    the same order, so memory stays flat whatever the split's size.

    TFDS's own Shuffler keeps a split in memory up to 1 GB, then spills it to 1,000 bucket files
    by hashed key; but with shuffling disabled a key is the example's own small index, so every
    example falls in bucket 0, which the writer reads back whole and sorts in memory: peak memory
    grew with the split (measured: bench/bench_convert.py) and Pick-a-Pic v2's 322 GB train split
    would have been held in memory at once."""

    def __init__(self, dirpath, hash_salt, disable_shuffling: bool = False, ignore_duplicates: bool = False):
        del hash_salt, disable_shuffling, ignore_duplicates   # in order, keys checked below
        os.makedirs(dirpath, exist_ok=True)
        self._path = os.path.join(dirpath, f"in_order_{uuid.uuid4().hex}.tmp")
        self._file = open(self._path, "wb")
        self._last: int | None = None
        self._num_examples = self._size = 0

    def add(self, key, data: bytes) -> None:
        if self._file is None:
            raise AssertionError("add() cannot be called after the examples are read")
        if not isinstance(key, int) or (self._last is not None and key <= self._last):
            raise ValueError(f"example key {key!r} after {self._last!r}: keys must be increasing integers")
        self._last = key
        self._file.write(struct.pack("<QQ", key, len(data)))
        self._file.write(data)
        self._num_examples += 1
        self._size += len(data)

    @property
    def size(self) -> int:
        return self._size

    @property
    def num_examples(self) -> int:
        return self._num_examples

    @property
    def bucket_lengths(self) -> list[int]:
        return [self._num_examples]

    def __iter__(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            with open(self._path, "rb") as f:
                for _ in range(self._num_examples):
                    key, length = struct.unpack("<QQ", f.read(16))
                    yield key, f.read(length)
        finally:
            os.remove(self._path)


@contextlib.contextmanager
def _write_in_order():
    """Within, TFDS's writer keeps an unshuffled split's examples in a scratch file, in order
    (:class:`_InOrder`); a shuffled split (never ours) gets TFDS's own Shuffler."""
    from tensorflow_datasets.core import shuffle   # tfds.core.writer calls shuffle.Shuffler(...)
    original = shuffle.Shuffler

    def choose(dirpath, hash_salt, disable_shuffling=False, ignore_duplicates=False):
        local = "://" not in str(dirpath)
        cls = _InOrder if disable_shuffling and local and not ignore_duplicates else original
        return cls(dirpath, hash_salt, disable_shuffling=disable_shuffling, ignore_duplicates=ignore_duplicates)

    shuffle.Shuffler = choose
    try:
        yield
    finally:
        shuffle.Shuffler = original


@functools.cache  # TFDS registers the class by name: define it once
def builder_class():
    core, features = tfds().core, tfds().features
    _spill_without_tensorflow()

    class PreferenceSet(core.GeneratorBasedBuilder):
        """Pairwise or pointwise preference records with encoded images."""
        VERSION = core.Version("1.1.0")
        SUPPORTED_VERSIONS = [core.Version("1.0.0")]   # read, never written
        RELEASE_NOTES = {"1.1.0": "tie and weight per record", "1.0.0": "prompt, criteria, rationale, label, images"}
        BUILDER_CONFIGS = [core.BuilderConfig(name=f) for f in sources.FORMATS]
        MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

        def __init__(self, *, skip_bad_records: bool = False, allow_outside_paths: bool = False, workers: int = 1,
                     ties: str = "drop", weights: str = "dataset", beam: bool = False,
                     max_image_pixels: int | None = None, records_per_shard: int = 256, **kwargs):
            self.skip_bad_records, self.allow_outside_paths = skip_bad_records, allow_outside_paths
            self.workers = workers
            # Beam: each split a PTransform (rdance.data.preference_beam); its workers apply
            # max_image_pixels themselves (the threaded path's caller sets it process-wide).
            self.beam, self.max_image_pixels, self.records_per_shard = beam, max_image_pixels, records_per_shard
            self.options = sources.Options(ties=ties, weights=weights)
            self.counter = sources.Counter()
            self.split_counters: dict[str, sources.Counter] = {}
            self.empty_splits: dict[str, dict] = {}   # split -> its counts, for splits with no record
            super().__init__(**kwargs)

        def _info(self):
            feature_dict = features.FeaturesDict({
                "prompt": features.Text(), "criteria": features.Text(),
                "rationale": features.Text(), "label": np.int32,
                # Encoded frames of all images, and how many frames each image has (1: a still).
                "images": features.Sequence(features.Tensor(shape=(), dtype=np.object_)),
                "frames": features.Sequence(np.int32),
                **({} if str(self.version) == "1.0.0" else {"tie": np.bool_, "weight": np.float32}),
            })
            # Keep the source order (grain shuffles at read time), so record i is row i.
            return self.dataset_info_from_configs(features=feature_dict, description=__doc__,
                                                  disable_shuffling=True)

        def _split_generators(self, dl_manager):
            root = str(dl_manager.manual_dir)
            if self.builder_config.name == "jsonl":
                found = {s: os.path.join(root, f"{s}.jsonl") for s in ("train", "test")}
                found = {s: p for s, p in found.items() if os.path.exists(p)}
                if not found:
                    raise FileNotFoundError(f"nothing to convert in {root}; put train.jsonl or test.jsonl there")
            else:
                found = sources.find_splits(self.builder_config.name, root)
                logging.info("splits found in %s: %s", root,
                             "  ".join(f"{s} ({len(p)} file{'s' * (len(p) > 1)})" for s, p in sorted(found.items())))
            if self.beam:
                return self._beam_splits(found, root)
            generators = {}
            for split, source in sorted(found.items()):
                examples = self._generate_examples(split, source, root)
                # TFDS fails the whole build on a split that yields nothing: find out first.
                first = next(examples, None)
                if first is None:
                    self.empty_splits[split] = dict(self.split_counters[split].counts)
                    logging.warning("split %s: no record to write (%s); leaving it out", split,
                                    ", ".join(f"{k}={v}" for k, v in sorted(self.empty_splits[split].items()))
                                    or "no rows")
                    continue
                generators[split] = itertools.chain([first], examples)
            if not generators:
                raise BadRecord(f"no split of {root} has a record to write: "
                                + "; ".join(f"{s}: {', '.join(f'{k}={v}' for k, v in sorted(c.items())) or 'no rows'}"
                                            for s, c in sorted(self.empty_splits.items())), "bad_file")
            return generators

        def _beam_splits(self, found: dict, root: str) -> dict:
            from rdance.data import preference_beam
            from PIL import Image
            stored = tuple(self.info.features.keys())
            transforms = {}
            for split, source in sorted(found.items()):
                job = preference_beam.SplitJob(
                    self.builder_config.name, split, root, self.options, self.skip_bad_records,
                    self.allow_outside_paths, self.max_image_pixels or Image.MAX_IMAGE_PIXELS, stored,
                    self._report_dir())
                shards = sources.shards(job.fmt, source, self.records_per_shard, skip_bad_records=self.skip_bad_records,
                                        allow_outside_paths=self.allow_outside_paths)
                logging.info("split %s: %d shard(s) for Beam", split, len(shards))
                transforms[split] = preference_beam.split_transform(job, shards)
            return transforms

        def _process_pipeline_result(self, pipeline_result):
            from rdance.data import preference_beam
            for split, counts in preference_beam.read_counts(pipeline_result).items():
                counter = self.split_counters[split] = sources.Counter(total=self.counter)
                for name, n in counts.counts.items():
                    counter.add(name, n)

        def _generate_splits(self, dl_manager, download_config):
            infos = super()._generate_splits(dl_manager, download_config)
            if not self.beam:
                return infos
            # A split with no record was written with one placeholder (TFDS's writer fails a
            # split with none): remove its files and report it, as the threaded path does.
            kept = []
            for info in infos:
                counts = self.split_counters.setdefault(info.name, sources.Counter(total=self.counter)).counts
                if counts["written"]:
                    kept.append(info)
                    continue
                self.empty_splits[info.name] = {k: v for k, v in counts.items() if v}
                logging.warning("split %s: no record to write (%s); leaving it out", info.name,
                                ", ".join(f"{k}={v}" for k, v in sorted(self.empty_splits[info.name].items()))
                                or "no rows")
                for path in info.filename_template.sharded_filepaths(len(info.shard_lengths)):
                    for leftover in path.parent.glob(path.name + "*"):   # the shard and its index
                        leftover.unlink()
            if not kept:
                raise BadRecord(f"no split of {dl_manager.manual_dir} has a record to write: "
                                + "; ".join(f"{s}: {', '.join(f'{k}={v}' for k, v in sorted(c.items())) or 'no rows'}"
                                            for s, c in sorted(self.empty_splits.items())), "bad_file")
            return kept

        def _report_dir(self) -> str:
            """Where Beam's workers leave a bad record's error (beside the set being built)."""
            return os.path.join(os.fspath(self.data_dir_root), ".bad_records")

        def _download_and_prepare(self, *args, **kwargs):
            with _write_in_order():
                if not self.beam:
                    return super()._download_and_prepare(*args, **kwargs)
                from rdance.data import preference_beam
                try:
                    return super()._download_and_prepare(*args, **kwargs)
                except Exception:
                    reported = preference_beam.first_report(self._report_dir())
                    if reported is None:
                        raise
                    raise reported from None

        def _generate_examples(self, split, source, root):
            fmt = self.builder_config.name
            counter = self.split_counters[split] = sources.Counter(total=self.counter)
            items = self._items(fmt, source, root, counter, self.options)
            per_prompt = None
            if self.options.weights == "per_prompt":   # a first pass over the prompts alone
                per_prompt = sources.prompt_counts(self._items(
                    fmt, source, root, sources.Counter(), dataclasses.replace(self.options, text_only=True)))
            stored = set(self.info.features.keys())
            # Keys are source positions, so the set is the same whatever the number of workers.
            for key, (record, error) in enumerate(ordered_map(decode_and_check, items, self.workers)):
                if error is not None:
                    if not self.skip_bad_records:
                        raise error
                    counter.add_bad(error.kind)
                    logging.warning("skipping bad record: %s", error)
                    continue
                counter.add("written")
                if per_prompt is not None:
                    record = dataclasses.replace(record, weight=1.0 / per_prompt[record.prompt])
                example = to_example(record)
                yield key, {k: v for k, v in example.items() if k in stored}

        def _items(self, fmt, source, root, counter, options):
            if fmt == "jsonl":
                return sources.jsonl(source, counter, self.skip_bad_records, self.allow_outside_paths)
            return sources.READERS[fmt](source, counter, root, options)

    return PreferenceSet


def decode_and_check(item: tuple[str, str, Callable[[], PreferenceRecord]]) -> tuple[PreferenceRecord | None,
                                                                                   BadRecord | None]:
    where, _, make = item
    try:
        return validate(make(), where), None
    except BadRecord as e:
        return None, e


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, on ``workers`` threads with at most ``2 * workers`` items in
    flight, so memory stays bounded on a set of any size. Threads suffice: the work is image
    decoding, which PIL does with the GIL released."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        in_flight: collections.deque = collections.deque()
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def to_example(record: PreferenceRecord) -> dict:
    """The stored example: a still's source bytes as they are where the record has them (JPEG
    stays JPEG), otherwise PNG."""
    frames = [im.shape[0] if im.ndim == 4 else 1 for im in record.images]
    source = record.encoded or (None,) * len(record.images)
    stills = [data if data is not None and im.ndim == 3 else encode_png(frame)
              for im, data in zip(record.images, source) for frame in (im if im.ndim == 4 else [im])]
    return {"prompt": record.prompt, "criteria": record.criteria, "rationale": record.rationale,
            "label": int(record.label), "images": stills, "frames": frames, "tie": bool(record.tie),
            "weight": np.float32(record.weight)}


def from_example(example: dict) -> PreferenceRecord:
    text = lambda v: v.decode() if isinstance(v, bytes) else v
    stills = [decode_image(b) for b in example["images"]]
    images, start = [], 0
    for count in example["frames"]:
        chunk = stills[start:start + count]
        images.append(chunk[0] if count == 1 else np.stack(chunk))
        start += count
    # A 1.0.0 set has neither tie nor weight: no tie, weight 1.
    return PreferenceRecord(text(example["prompt"]), tuple(images), int(example["label"]),
                            text(example["criteria"]), text(example["rationale"]),
                            tie=bool(example.get("tie", False)), weight=float(example.get("weight", 1.0)))


class PreferenceSource:
    """Random access (for grain) to a converted split, decoding records on access."""

    def __init__(self, data_dir: str, fmt: str, split: str = "train"):
        cls = builder_class()
        # The newest version written there: a set converted before 1.1.0 reads as it was.
        for version in (cls.VERSION, *cls.SUPPORTED_VERSIONS):
            builder = cls(config=fmt, data_dir=data_dir, version=str(version))
            if builder.is_prepared():
                break
        else:
            raise FileNotFoundError(f"no converted {fmt} preference set in {data_dir}; run "
                                    f"python -m rdance.run.preference_set --format={fmt} ...")
        self.version = str(builder.version)
        self.source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> PreferenceRecord:
        return from_example(self.source[index])
