"""Score images or pairs with a reward model; print a table and write JSONL.

    python -m rdance.run.score --rm=/tmp/rm/export --input=pairs.jsonl --out=scores.jsonl [--explain]
    python -m rdance.run.score --rm=/tmp/rm/export --input=images/ --prompt="two red circles"

A JSONL input uses the preference-record format (rdance.data.records): a record with two images
is scored pairwise (image 1 = reference, P("yes": image 2 is better)), one with a single image
pointwise. A folder is scored pointwise, every image against ``--prompt``.

An unreadable image, a bad record or a question longer than the RM's ``max_prompt_tokens`` stops
the run with one line naming it; ``--skip_bad`` skips and lists them instead. Images whose size
differs from the most common one are resized to it and listed (``--noresize``: an error naming
them). ``--out`` is written whole or not at all.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import tempfile

import numpy as np
from absl import flags
from PIL import Image

from rdance.core import console
from rdance.run import record_flags
from rdance.data.records import BadRecord, JsonlRecords, _read_image, pixel_limit, too_many_pixels

RM = flags.DEFINE_string("rm", None, "reward model folder (train_reward's export or an InternVL -hf folder)")
INPUT = flags.DEFINE_string("input", None, "a preference JSONL file, or a folder of images")
PROMPT = flags.DEFINE_string("prompt", None, "the prompt for every image of a folder input")
CRITERIA = flags.DEFINE_string("criteria", None, "criteria preset (alignment, aesthetics, plausibility) or text")
OUT = flags.DEFINE_string("out", None, "JSONL to write (default: print only)")
EXPLAIN = flags.DEFINE_bool("explain", False, "also generate the rationale for pairs")
BATCH = flags.DEFINE_integer("batch_size", 8, "images per forward pass", lower_bound=1)
SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "skip unreadable images, bad records and too-long prompts "
                             "(listed on stderr) and score the rest, instead of stopping at the first")
RESIZE = flags.DEFINE_bool("resize", True, "resize images whose size differs from the most common one to that "
                           "size (listed on stderr) so that they batch; --noresize stops and names them instead")
MAX_PROMPT_TOKENS = flags.DEFINE_integer(
    "max_prompt_tokens", None, "longest question in tokens (default: the RM's reward_config.json); raise it "
    "for long prompts or criteria", lower_bound=1)
flags.adopt_module_key_flags(record_flags)   # --help lists them with this module's own
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LISTED = 10  # names shown in a list of skipped or resized files before "and N more"


def load_items(path: str, prompt: str | None, skip_bad: bool) -> tuple[list[dict], list[str]]:
    """The items to score and, with ``skip_bad``, why the others were skipped. Each item names
    its source (``where``) and each of its images (``labels``) for the messages."""
    if os.path.isdir(path):
        return folder_items(path, prompt, skip_bad)
    return jsonl_items(path, skip_bad)


def folder_items(path: str, prompt: str | None, skip_bad: bool) -> tuple[list[dict], list[str]]:
    if not prompt:
        raise ValueError("a folder input needs --prompt (or use a JSONL file with one prompt per record)")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")

    def item(name):
        return {"name": name, "where": name, "labels": (name,), "prompt": prompt,
                "images": (read_image(os.path.join(path, name)),)}
    return collect([lambda n=n: item(n) for n in names], skip_bad)


def read_image(file: str) -> np.ndarray:
    try:
        return _read_image(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_many_pixels(str(file), e) from None
    except OSError as e:  # a folder, not an image, truncated
        reason = getattr(e, "strerror", None) or str(e)
        raise BadRecord(f"{file} cannot be read as an image ({reason}); replace or remove it") from None


def jsonl_items(path: str, skip_bad: bool) -> tuple[list[dict], list[str]]:
    records = JsonlRecords(path, skip_bad_records=skip_bad,  # logs the lines it skips
                           allow_outside_paths=record_flags.ALLOW_OUTSIDE_PATHS.value)

    def item(i):
        line, entry = records.entries[i]
        where = f"line {line} of {path}"
        record = records[i]
        return {"name": f"record {i}", "where": where, "prompt": record.prompt, "images": record.images,
                "labels": tuple(f"{where}, images[{j}] {p!r}" for j, p in enumerate(entry["images"])),
                "criteria": record.criteria or None}
    return collect([lambda i=i: item(i) for i in range(len(records))], skip_bad)


def collect(loaders, skip_bad: bool) -> tuple[list[dict], list[str]]:
    """Call every loader; a BadRecord stops the run, or with ``skip_bad`` is listed and skipped."""
    items, skipped = [], []
    for load in loaders:
        try:
            items.append(load())
        except BadRecord as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    return items, skipped


def common_size(items: list[dict], resize: bool) -> tuple[list[dict], str | None]:
    """Bring every image to the most common height x width so that batches stack; the note says
    what was resized. Without ``resize`` a mixed input is an error naming the odd images."""
    sizes = collections.Counter(im.shape[-3:-1] for it in items for im in it["images"])
    if len(sizes) <= 1:
        return items, None
    target = sizes.most_common(1)[0][0]
    odd = [f"{label} ({im.shape[-3]}x{im.shape[-2]})" for it in items
           for label, im in zip(it["labels"], it["images"]) if im.shape[-3:-1] != target]
    size = f"{target[0]}x{target[1]}"
    if not resize:
        raise ValueError(f"images differ in size (height x width): most are {size}, but {listing(odd)}; "
                         f"drop --noresize to resize them to {size}, or score each size in its own run")
    resized = [dict(it, images=tuple(resize_to(im, target) for im in it["images"])) for it in items]
    return resized, (f"resized {len(odd)} image(s) to the most common size {size} (height x width; "
                     f"--noresize stops instead): {listing(odd)}")


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image [H, W, 3] or clip [T, H, W, 3] resized (bicubic) to ``size`` = (H, W)."""
    if image.shape[-3:-1] == size:
        return image
    frames = image.reshape(-1, *image.shape[-3:])
    out = [np.asarray(Image.fromarray(f).resize(size[::-1], Image.Resampling.BICUBIC)) for f in frames]
    return np.stack(out).reshape(*image.shape[:-3], *size, 3)


def check_prompts(rm, items: list[dict], criteria: str | None, skip_bad: bool) -> tuple[list[dict], list[str]]:
    """Items whose question fits the RM's max_prompt_tokens; a longer one stops the run, or with
    ``skip_bad`` is listed and skipped."""
    limit = rm.spec.max_prompt_tokens

    def check(it):
        n = rm.question_length(it["prompt"], it["images"][0].shape, pairwise=len(it["images"]) == 2,
                               criteria=criteria or it.get("criteria"))
        if n > limit:
            raise BadRecord(f"{it['where']}: its question (prompt, criteria and image tokens) is {n} tokens, "
                            f"over the RM's limit of {limit}; pass --max_prompt_tokens={n} or more")
        return it
    return collect([lambda it=it: check(it) for it in items], skip_bad)


def listing(names: list[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def score_items(rm, items: list[dict], criteria: str | None, batch: int, explain: bool) -> list[dict]:
    out = []
    # A batch holds one kind (pair or single image), one frame count (images, or clips of T
    # frames) and one criteria text (a record's own, unless --criteria overrides all).
    groups = collections.defaultdict(list)
    for it in items:
        groups[len(it["images"]), it["images"][0].shape[:-3], criteria or it.get("criteria")].append(it)
    for (kind, _, crit), group in sorted(groups.items(), key=lambda kv: -kv[0][0]):
        for start in range(0, len(group), batch):
            chunk = group[start:start + batch]
            prompts = [it["prompt"] for it in chunk]
            if kind == 2:
                refs = np.stack([it["images"][0] for it in chunk])
                cands = np.stack([it["images"][1] for it in chunk])
                scores = rm.score_pairwise(refs, cands, prompts, criteria=crit)
                reasons = rm.explain(refs, cands, prompts, criteria=crit) if explain else [None] * len(chunk)
            else:
                scores = rm.score_pointwise(np.stack([it["images"][0] for it in chunk]), prompts, criteria=crit)
                reasons = [None] * len(chunk)
            for it, s, why in zip(chunk, scores, reasons):
                row = {"name": it["name"], "prompt": it["prompt"], "kind": "pairwise" if kind == 2 else "pointwise",
                       "score": float(s)}
                if why is not None:
                    row["rationale"] = why
                out.append(row)
    order = {it["name"]: i for i, it in enumerate(items)}
    return sorted(out, key=lambda r: order[r["name"]])


def table(rows: list[dict]) -> str:
    lines = [f"{'item':<14} {'kind':<9} {'score':>7}  prompt"]
    for r in rows:
        lines.append(f"{r['name'][:14]:<14} {r['kind']:<9} {r['score']:7.4f}  {r['prompt'][:60]}")
        if "rationale" in r:
            lines.append(f"{'':<32}{r['rationale']}")
    return "\n".join(lines)


def main(argv):
    del argv
    try:
        with pixel_limit(record_flags.MAX_IMAGE_PIXELS.value):
            rows = score(INPUT.value, OUT.value)
    except BadRecord as e:
        sys.exit(f"error: {e}" + ("" if SKIP_BAD.value else " (or pass --skip_bad to skip it and score the rest)"))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(table(rows))
    if OUT.value:
        write_atomically(OUT.value, [json.dumps(r) + "\n" for r in rows])


def score(input_path: str, out: str | None) -> list[dict]:
    """The score rows; what was skipped or resized is listed on stderr. Raises on bad input."""
    from rdance.reward.api import RewardModel
    if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"--out={out}: its folder does not exist; create it or pass another path")
    items, skipped = load_items(input_path, PROMPT.value, SKIP_BAD.value)
    items, resized = common_size(items, RESIZE.value)
    overrides = {"max_prompt_tokens": MAX_PROMPT_TOKENS.value} if MAX_PROMPT_TOKENS.value else {}
    rm = RewardModel.from_pretrained(RM.value, **overrides)
    items, too_long = check_prompts(rm, items, CRITERIA.value, SKIP_BAD.value)
    skipped += too_long
    if resized:
        print(resized, file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} bad input(s) (--skip_bad):", *skipped, sep="\n  ", file=sys.stderr)
    if not items:
        raise ValueError(f"nothing left to score in {input_path}: every input was skipped (listed above)")
    return score_items(rm, items, CRITERIA.value, BATCH.value, EXPLAIN.value)


def write_atomically(path: str, lines: list[str]):
    """Write to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".score-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def run():
    flags.mark_flags_as_required(["rm", "input"])
    console.run(main)


if __name__ == "__main__":
    run()
