"""Score images or pairs with a reward model; print a table and write JSONL.

    python -m rdance.score --rm=/tmp/rm/export --input=pairs.jsonl --out=scores.jsonl [--explain]
    python -m rdance.score --rm=/tmp/rm/export --input=images/ --prompt="two red circles"

A JSONL input uses the preference-record format (rdance.data.records): a record with two images
is scored pairwise (image 1 = reference, P("yes": image 2 is better)), one with a single image
pointwise. A folder is scored pointwise, every image against ``--prompt``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

RM = flags.DEFINE_string("rm", None, "reward model folder (train_reward's export or an InternVL -hf folder)")
INPUT = flags.DEFINE_string("input", None, "a preference JSONL file, or a folder of images")
PROMPT = flags.DEFINE_string("prompt", None, "the prompt for every image of a folder input")
CRITERIA = flags.DEFINE_string("criteria", None, "criteria preset (alignment, aesthetics, plausibility) or text")
OUT = flags.DEFINE_string("out", None, "JSONL to write (default: print only)")
EXPLAIN = flags.DEFINE_bool("explain", False, "also generate the rationale for pairs")
BATCH = flags.DEFINE_integer("batch_size", 8, "images per forward pass")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_items(path: str, prompt: str | None) -> list[dict]:
    from rdance.data.records import JsonlRecords, _read_image
    if os.path.isdir(path):
        if not prompt:
            raise ValueError("a folder input needs --prompt (or use a JSONL file with one prompt per record)")
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return [{"name": n, "prompt": prompt, "images": (_read_image(os.path.join(path, n)),)} for n in names]
    records = JsonlRecords(path)
    return [{"name": f"record {i}", "prompt": r.prompt, "images": r.images, "criteria": r.criteria or None}
            for i, r in enumerate(records[i] for i in range(len(records)))]


def score_items(rm, items: list[dict], criteria: str | None, batch: int, explain: bool) -> list[dict]:
    out = []
    for kind in (2, 1):
        group = [it for it in items if len(it["images"]) == kind]
        for start in range(0, len(group), batch):
            chunk = group[start:start + batch]
            prompts = [it["prompt"] for it in chunk]
            crit = criteria or chunk[0].get("criteria")
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
    from rdance.reward.api import RewardModel
    try:
        items = load_items(INPUT.value, PROMPT.value)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    rm = RewardModel.from_pretrained(RM.value)
    rows = score_items(rm, items, CRITERIA.value, BATCH.value, EXPLAIN.value)
    print(table(rows))
    if OUT.value:
        tmp = OUT.value + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, OUT.value)


def run():
    flags.mark_flags_as_required(["rm", "input"])
    app.run(main)


if __name__ == "__main__":
    run()
