"""The Apache Beam path of the preference-set builder: each split as a Beam PTransform.

``python -m rdance.run.preference_set ... --beam_pipeline_options=runner=DirectRunner,...``
builds the same set as the threaded path, with the work spread over Beam's workers (the
DirectRunner's processes on one machine; Dataflow, Spark or Flink on a cluster):

1. The driver cuts each split's files into shards (rdance.data.sources.shards: parquet row
   groups, ranges of a JSON array's elements or of a JSONL file's records) and reads nothing
   else; the shards are spread over the workers (``Reshuffle``).
2. A worker reads its shard, decodes and checks every record (``--max_image_pixels`` holds
   there too) and encodes the examples. A record's key packs (shard, position in the shard)
   into one integer (:func:`key`), so the keys sort as the records lie in the source: TFDS's
   BeamWriter, the split unshuffled, writes them in that order, the order of the threaded path.
3. What the threaded path counts (written, ties, soft_ties, unlabelled, bad and bad/KIND) is
   counted in Beam metrics, namespace ``rdance.split.<split>``, and read back from the
   pipeline's result when it is done.
4. ``--weights=per_prompt`` counts the prompts of the split in the pipeline (a pass over the
   text columns) and hands the counts to the workers as a side input.
5. A split in which no record survives still gets one placeholder example, because TFDS's
   writer fails a split with none; the builder then removes that split's files and reports the
   split as empty, as the threaded path does.

A bad record without ``--skip_bad_records`` fails its worker with the record's BadRecord; the
runner stops the pipeline and the conversion writes nothing. Runners report a worker's failure
in their own ways (the DirectRunner's processes as a traceback in a RuntimeError), so the worker
first leaves the record's error as a JSON file in ``report_dir`` (:func:`first_report`), and the
driver raises that BadRecord: the user reads one line naming the record and the fix.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterator

from rdance.data import sources
from rdance.data.records import pixel_limit

NAMESPACE = "rdance.split."
SHARD_BITS = 32   # positions within a shard below 2**32; shards above


def key(shard: int, position: int) -> int:
    """The example key of the record at ``position`` in shard ``shard``: increasing in source order."""
    return (shard << SHARD_BITS) | position


def beam():
    import apache_beam   # the `beam` extra; only the Beam path needs it
    return apache_beam


class MetricsCounter(sources.Counter):
    """A split's Counter that counts into Beam metrics, so the counts of all workers add up."""

    def __init__(self, split: str):
        super().__init__()
        self.namespace = NAMESPACE + split

    def add(self, key: str, n: int = 1):
        beam().metrics.Metrics.counter(self.namespace, key).inc(n)


def read_counts(result) -> dict[str, sources.Counter]:
    """{split: its counts} from a finished pipeline's metrics."""
    found: dict[str, sources.Counter] = {}
    metrics = result.metrics().query(beam().metrics.metric.MetricsFilter())
    for counter in metrics["counters"]:
        name = counter.key.metric
        if not name.namespace.startswith(NAMESPACE):
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        if value:
            found.setdefault(name.namespace[len(NAMESPACE):], sources.Counter()).add(name.name, value)
    return found


def first_report(report_dir: str):
    """The BadRecord a worker reported in ``report_dir`` (the first by split, then source order);
    None where none did."""
    from etils import epath
    from rdance.data.records import BadRecord
    folder = epath.Path(report_dir)
    reports = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []
    if not reports:
        return None
    first = min(reports, key=lambda r: (r["split"], r["key"]))
    return BadRecord(first["message"], first["kind"])


@dataclasses.dataclass(frozen=True)
class SplitJob:
    """All a worker needs to convert the shards of one split (pickled to the workers)."""
    fmt: str
    split: str
    root: str
    options: sources.Options
    skip_bad_records: bool
    allow_outside_paths: bool
    max_image_pixels: int
    stored: tuple[str, ...]   # the example's feature names (1.1.0's)
    report_dir: str           # where a worker leaves a bad record's error before it fails

    def items(self, shard: tuple[sources.Part, ...], counter: sources.Counter, options: sources.Options):
        if self.fmt == "jsonl":
            (part,) = shard
            return sources.jsonl(part, counter, self.skip_bad_records, self.allow_outside_paths)
        return sources.READERS[self.fmt](list(shard), counter, self.root, options)

    def prompts(self, numbered: tuple[int, tuple[sources.Part, ...]]) -> Iterator[str]:
        _, shard = numbered
        text = dataclasses.replace(self.options, text_only=True)
        return (prompt for _, prompt, _ in self.items(shard, sources.Counter(), text))

    def convert(self, numbered: tuple[int, tuple[sources.Part, ...]], per_prompt=None) -> Iterator[tuple[int, dict]]:
        from rdance.data.preference_builder import decode_and_check, to_example
        from rdance.data.records import BadRecord
        from absl import logging
        index, shard = numbered
        counter = MetricsCounter(self.split)
        with pixel_limit(self.max_image_pixels):
            for position, item in enumerate(self.items(shard, counter, self.options)):
                record, error = decode_and_check(item)
                if error is not None:
                    if not self.skip_bad_records:
                        self.report(key(index, position), error)
                        raise BadRecord(str(error), error.kind)
                    counter.add_bad(error.kind)
                    logging.warning("skipping bad record: %s", error)
                    continue
                counter.add("written")
                if per_prompt is not None:
                    record = dataclasses.replace(record, weight=1.0 / per_prompt[record.prompt])
                example = to_example(record)
                yield key(index, position), {k: v for k, v in example.items() if k in self.stored}

    def report(self, at: int, error) -> None:
        from etils import epath
        folder = epath.Path(self.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.split}-{at}.json").write_text(json.dumps(
            {"split": self.split, "key": at, "kind": error.kind, "message": str(error)}))

    def placeholder_if_empty(self, _, count: int) -> Iterator[tuple[int, dict]]:
        """One placeholder example for a split with none (removed after the build)."""
        if count == 0:
            yield 0, {"prompt": "", "criteria": "", "rationale": "", "label": 0, "images": [], "frames": [],
                      "tie": False, "weight": 1.0}


def split_transform(job: SplitJob, shards: list[tuple[sources.Part, ...]]):
    """The PTransform that TFDS applies to the pipeline for ``job.split``: (key, example)s."""
    b = beam()

    @b.ptransform_fn
    def convert_split(pipeline):
        numbered = (pipeline | "Shards" >> b.Create(list(enumerate(shards)))
                    | "Spread" >> b.Reshuffle())
        per_prompt = None
        if job.options.weights == "per_prompt":
            per_prompt = b.pvalue.AsDict(numbered | "Prompts" >> b.FlatMap(job.prompts)
                                         | "CountPrompts" >> b.combiners.Count.PerElement())
        examples = numbered | "Convert" >> b.FlatMap(job.convert, per_prompt=per_prompt)
        count = b.pvalue.AsSingleton(examples | "CountExamples" >> b.combiners.Count.Globally())
        placeholder = (pipeline | "Once" >> b.Create([None])
                       | "PlaceholderIfEmpty" >> b.FlatMap(job.placeholder_if_empty, count=count))
        return (examples, placeholder) | "All" >> b.Flatten()

    return convert_split()
