"""Preference sets converted once to ArrayRecord through a TFDS builder, read back by grain.

    python -m rdance.data.preference_set --format=pickapic_v2 --manual_dir=/data/pickapic \
        --data_dir=/data/tfds [--skip_bad_records]

``manual_dir`` holds the raw files: for parquet formats ``train/`` and ``test/`` folders (or the
files directly, all taken as ``train``); for ``jsonl``, ``train.jsonl`` / ``test.jsonl`` with
their images (see rdance.data.records). Images are stored as PNG/JPEG bytes and decoded on
read, so neither building nor reading needs TensorFlow. TFDS writes into an ``incomplete.*``
folder and renames it when done: an interrupted conversion leaves nothing that looks finished.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from absl import app, flags, logging

from rdance.data import sources
from rdance.data.records import BadRecord, PreferenceRecord, decode_image, encode_png, validate


def _tfds():
    import tensorflow_datasets as tfds  # the `data` extra; only conversion and reading need it
    return tfds


@functools.cache  # TFDS registers the class by name: define it once
def builder_class():
    tfds = _tfds()

    class PreferenceSet(tfds.core.GeneratorBasedBuilder):
        """Pairwise or pointwise preference records with encoded images."""
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f) for f in sources.FORMATS]
        MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

        def __init__(self, *, skip_bad_records: bool = False, **kwargs):
            self.skip_bad_records = skip_bad_records
            self.counter = sources.Counter()
            super().__init__(**kwargs)

        def _info(self):
            features = tfds.features.FeaturesDict({
                "prompt": tfds.features.Text(), "criteria": tfds.features.Text(),
                "rationale": tfds.features.Text(), "label": np.int32,
                # Encoded frames of all images, and how many frames each image has (1: a still).
                "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
                "frames": tfds.features.Sequence(np.int32),
            })
            # Keep the source order (grain shuffles at read time), so record i is row i.
            return self.dataset_info_from_configs(features=features, description=__doc__,
                                                  disable_shuffling=True)

        def _split_generators(self, dl_manager):
            root = str(dl_manager.manual_dir)
            if self.builder_config.name == "jsonl":
                found = {s: os.path.join(root, f"{s}.jsonl") for s in ("train", "test")}
            else:
                found = {s: os.path.join(root, s) for s in ("train", "test")}
                if not any(os.path.isdir(p) for p in found.values()):
                    found = {"train": root}
            found = {s: p for s, p in found.items() if os.path.exists(p)}
            if not found:
                raise FileNotFoundError(f"nothing to convert in {root}; see the instructions:\n{__doc__}")
            return {split: self._generate_examples(path) for split, path in found.items()}

        def _generate_examples(self, path):
            fmt = self.builder_config.name
            reader = sources.READERS[fmt]
            items = (reader(path, self.counter, self.skip_bad_records) if fmt == "jsonl"
                     else reader(path, self.counter))
            for key, (where, make) in enumerate(items):
                try:
                    record = validate(make(), where)
                except BadRecord as e:
                    if not self.skip_bad_records:
                        raise BadRecord(f"{e} (set skip_bad_records to skip and count such records)") from None
                    self.counter.add("bad")
                    logging.warning("skipping bad record: %s", e)
                    continue
                self.counter.add("written")
                yield key, to_example(record)

    return PreferenceSet


def to_example(record: PreferenceRecord) -> dict:
    frames = [im.shape[0] if im.ndim == 4 else 1 for im in record.images]
    stills = [f for im in record.images for f in (im if im.ndim == 4 else [im])]
    return {"prompt": record.prompt, "criteria": record.criteria, "rationale": record.rationale,
            "label": int(record.label), "images": [encode_png(f) for f in stills], "frames": frames}


def from_example(example: dict) -> PreferenceRecord:
    text = lambda v: v.decode() if isinstance(v, bytes) else v
    stills = [decode_image(b) for b in example["images"]]
    images, start = [], 0
    for count in example["frames"]:
        chunk = stills[start:start + count]
        images.append(chunk[0] if count == 1 else np.stack(chunk))
        start += count
    return PreferenceRecord(text(example["prompt"]), tuple(images), int(example["label"]),
                            text(example["criteria"]), text(example["rationale"]))


class PreferenceSource:
    """Random access (for grain) to a converted split, decoding records on access."""

    def __init__(self, data_dir: str, fmt: str, split: str = "train"):
        builder = builder_class()(config=fmt, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(f"no converted {fmt} preference set in {data_dir}; run "
                                    f"python -m rdance.data.preference_set --format={fmt} ...")
        self.source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> PreferenceRecord:
        return from_example(self.source[index])


def convert(fmt: str, manual_dir: str, data_dir: str, skip_bad_records: bool = False) -> dict:
    """Build the ArrayRecord files; returns the counts (written, bad, ties)."""
    if fmt not in sources.FORMATS:
        raise ValueError(f"--format={fmt!r}; use one of {sources.FORMATS}")
    tfds = _tfds()
    builder = builder_class()(config=fmt, data_dir=data_dir, file_format="array_record",
                              skip_bad_records=skip_bad_records)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return {k: v for k, v in builder.counter.counts.items() if v}


FORMAT = flags.DEFINE_enum("format", None, list(sources.FORMATS), "source layout")
MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "folder with the raw files")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write the ArrayRecord files to")
SKIP = flags.DEFINE_bool("skip_bad_records", False, "skip and count bad records instead of stopping")


def main(argv):
    del argv
    counts = convert(FORMAT.value, MANUAL_DIR.value, DATA_DIR.value, SKIP.value)
    print("  ".join(f"{k}={v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    flags.mark_flags_as_required(["format", "manual_dir", "data_dir"])
    app.run(main)
