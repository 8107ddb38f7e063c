"""Preference sets converted once to ArrayRecord through a TFDS builder, read back by grain.

    python -m rdance.run.preference_set --format=pickapic_v2 --manual_dir=/data/pickapic \
        --data_dir=/data/tfds [--workers=N] [--ties=drop|soft] [--weights=dataset|per_prompt|none] \
        [--skip_bad_records] [--allow_outside_paths] [--max_image_pixels=N] \
        [--beam_pipeline_options=runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing]

``manual_dir`` holds the raw files: for parquet formats the dataset's files as published, every
split kept as its own (a Hub download's ``data/<split>-NNNNN-of-NNNNN-<hash>.parquet``, the Hub's
``default/<split>/`` parquet conversion, ``metadata-<split>.parquet``, or one folder per split;
files with no split in their name or folder are ``train``); for ``jsonl``, ``train.jsonl`` / ``test.jsonl`` with
their images, which must stay inside ``manual_dir`` unless ``--allow_outside_paths`` (see
rdance.data.records). Images are stored as PNG/JPEG bytes and decoded on read, so neither
building nor reading needs TensorFlow. The set is built in a hidden folder inside ``data_dir``
and moved into place when done: a conversion that fails or is interrupted leaves nothing in
``data_dir``. The builder itself lives in rdance.data.preference_builder.

``--ties=drop`` (default) skips pairs with no preference and counts them (``ties``);
``--ties=soft`` keeps them as 0.5/0.5 targets (``soft_ties``). ``--weights=dataset`` (default)
stores the set's own row weights (Pick-a-Pic v2: 1 / num_example_per_prompt, as PickScore), 1
where it has none; ``per_prompt`` computes 1 / (records of the prompt in its split); ``none``
stores 1. Training uses weights only with ``--config.rm.row_weights=true``.

``--beam_pipeline_options`` (Beam's own options, comma-separated, with or without their
``--``) builds through Apache Beam instead of threads (the ``beam`` extra): the splits' files
are cut into shards (parquet row groups, ranges of JSON/JSONL records) that Beam's workers
decode, check and encode, on one machine with the DirectRunner or on a cluster with Dataflow,
Spark or Flink. The set written is the same as the threaded path's, record for record; counts
come back through Beam metrics (rdance.data.preference_beam). ``data_dir`` and ``manual_dir``
must then be paths every worker can read and write (a shared file system).
"""
from __future__ import annotations

import os
import sys
import tempfile

from absl import flags
from PIL import Image

from rdance.core import console
from rdance.run import record_flags
from rdance.data import sources
from rdance.data.preference_builder import builder_class, tfds
from rdance.data.records import BadRecord, pixel_limit

DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own limit, about 89 megapixels
SKIP_HINT = "; or pass --skip_bad_records to skip and count such records"


def convert(fmt: str, manual_dir: str, data_dir: str, skip_bad_records: bool = False,
            allow_outside_paths: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
            workers: int = 1, ties: str = "drop", weights: str = "dataset",
            beam_pipeline_options: str = "", beam_records_per_shard: int = 256) -> dict:
    """Build the ArrayRecord files; returns the counts over all splits (written, ties, bad and
    bad/KIND) and, under ``splits``, each split's (an empty split, left out, has no ``written``).
    With ``beam_pipeline_options`` (e.g. ``runner=DirectRunner,direct_num_workers=2``) the
    build runs as an Apache Beam pipeline with those options."""
    if fmt not in sources.FORMATS:
        raise ValueError(f"--format={fmt!r}; use one of {sources.FORMATS}")
    sources.Options(ties=ties, weights=weights)   # a bad value is named before any work
    beam_options = pipeline_options(beam_pipeline_options)
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual_dir={manual_dir} is not a folder; give the folder that "
                                "holds the raw files")
    created = not os.path.exists(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{fmt}-incomplete-", dir=data_dir) as scratch:
            return _build_and_move(fmt, manual_dir, scratch, data_dir, max_image_pixels,
                                   skip_bad_records=skip_bad_records, allow_outside_paths=allow_outside_paths,
                                   workers=workers, ties=ties, weights=weights, beam_options=beam_options,
                                   records_per_shard=beam_records_per_shard)
    except BadRecord as e:
        hint = "" if e.kind == "bad_file" or skip_bad_records else SKIP_HINT
        raise BadRecord(f"{e}{hint}", e.kind) from None
    finally:
        if created and not os.listdir(data_dir):
            os.rmdir(data_dir)


class BadBeamOptions(ValueError):
    """--beam_pipeline_options names an option Beam does not know."""


def pipeline_options(text: str):
    """Beam's PipelineOptions from ``runner=DirectRunner,direct_num_workers=2`` (each with or
    without its ``--``); None for an empty text (the threaded path)."""
    if not text:
        return None
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise ImportError("--beam_pipeline_options needs Apache Beam: pip install 'rdance[beam]' "
                          "(apache-beam[gcp] for Dataflow)") from None
    flags_ = [f"--{option.strip().removeprefix('--')}" for option in text.split(",") if option.strip()]
    options = PipelineOptions(flags_)
    unknown = options.get_all_options(retain_unknown_options=True).keys() - PipelineOptions([]).get_all_options().keys()
    if unknown:
        raise BadBeamOptions(f"--beam_pipeline_options: Beam knows no option {', '.join('--' + u for u in sorted(unknown))}; "
                         "see Beam's pipeline options for your runner")
    return options


def _build_and_move(fmt: str, manual_dir: str, scratch: str, data_dir: str, max_image_pixels: int,
                    beam_options=None, **options) -> dict:
    builder = builder_class()(config=fmt, data_dir=scratch, file_format="array_record",
                              beam=beam_options is not None, max_image_pixels=max_image_pixels, **options)
    target = os.path.join(data_dir, os.path.relpath(builder.data_dir, scratch))
    if os.path.exists(target):
        raise FileExistsError(f"{target} already holds a converted {fmt} set; delete that folder "
                              "to convert again, or give another --data_dir")
    with pixel_limit(max_image_pixels):
        builder.download_and_prepare(download_config=tfds().download.DownloadConfig(
            manual_dir=manual_dir, beam_options=beam_options))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(builder.data_dir, target)
    counts = {k: v for k, v in builder.counter.counts.items() if v}
    counts["splits"] = {split: {k: v for k, v in c.counts.items() if v}
                        for split, c in sorted(builder.split_counters.items())}
    return counts


def summary(counts: dict) -> str:
    """``written=5  bad=2 (not_utf8=1, wrong_type=1)  ties=1``, then each split's when there are
    several or one was left out: ``[train: written=4  ties=1 | validation: EMPTY, left out: ties=3]``."""
    def line(c: dict) -> str:
        kinds = ", ".join(f"{k.split('/', 1)[1]}={v}" for k, v in sorted(c.items()) if k.startswith("bad/"))
        return "  ".join(f"{k}={v}" + (f" ({kinds})" if k == "bad" and kinds else "")
                         for k, v in sorted(c.items(), key=lambda kv: (kv[0] != "written", kv[0]))
                         if "/" not in k and k != "splits")
    splits = counts.get("splits", {})
    text = line(counts)
    if len(splits) > 1 or any("written" not in c for c in splits.values()):
        text += " [" + " | ".join(f"{s}: " + (line(c) if "written" in c else f"EMPTY, left out: {line(c) or 'no rows'}")
                                 for s, c in splits.items()) + "]"
    return text


FORMAT = flags.DEFINE_enum("format", None, list(sources.FORMATS), "source layout")
MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "folder with the raw files")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write the ArrayRecord files to")
flags.adopt_module_key_flags(record_flags)   # --help lists them with this module's own
SKIP = flags.DEFINE_bool("skip_bad_records", False, "skip and count bad records instead of stopping")
WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "threads decoding and checking images (the set "
                               "is the same for any number)", lower_bound=1)
TIES = flags.DEFINE_enum("ties", "drop", list(sources.TIES), "pairs with no preference: drop (skip and count) "
                         "or soft (keep as a 0.5/0.5 target)")
BEAM = flags.DEFINE_string("beam_pipeline_options", "", "build with Apache Beam, with these pipeline options "
                           "(comma-separated, e.g. runner=DirectRunner,direct_num_workers=2,"
                           "direct_running_mode=multi_processing; Dataflow, Spark and Flink take theirs); "
                           "empty: threads in this process (--workers)")
RECORDS_PER_SHARD = flags.DEFINE_integer("beam_records_per_shard", 256, "with Beam, JSON and JSONL records a "
                                        "shard holds (a parquet shard is a row group)", lower_bound=1)
WEIGHTS = flags.DEFINE_enum("weights", "dataset", list(sources.WEIGHTS), "row weights stored: the set's own "
                            "(Pick-a-Pic: 1/num_example_per_prompt), 1/records of the prompt, or 1")


def main(argv):
    del argv
    tfds().disable_progress_bar()  # so a failure's one-line message is what the terminal shows
    try:
        counts = convert(FORMAT.value, MANUAL_DIR.value, DATA_DIR.value, SKIP.value,
                         record_flags.ALLOW_OUTSIDE_PATHS.value, record_flags.MAX_IMAGE_PIXELS.value, WORKERS.value,
                         TIES.value, WEIGHTS.value, BEAM.value, RECORDS_PER_SHARD.value)
    except (BadRecord, FileNotFoundError, FileExistsError, ImportError, BadBeamOptions) as e:
        sys.exit(f"error: {e}")
    print(f"{summary(counts)}; read it as tfds:{DATA_DIR.value}:{FORMAT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["format", "manual_dir", "data_dir"])
    console.run(main)
