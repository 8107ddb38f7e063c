"""What the generator loops read: prompt files, caption-image files, and the fine-tuning examples.

A fine-tuning example is one training prompt (its index, generator tokens, RM tokens and, for a
pairwise RM, its Best-of-N references) plus one caption-image pair for the pretraining anchor.
Example i uses prompt i mod P and anchor pair i, so the grain pipeline's shuffle, host slicing and
checkpointed position apply to both at once.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image


class CaptionImages:
    """Caption-image pairs from a JSONL file, one ``{"prompt": ..., "image": "path"}`` per line
    (paths relative to the file's folder), images resized to ``height`` x ``width``."""

    def __init__(self, path: str, height: int, width: int):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"caption-image file {path} not found")
        self.root, self.height, self.width = os.path.dirname(os.path.abspath(path)), height, width
        self.records = []
        for n, line in enumerate(open(path), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("prompt"), str) or not isinstance(record.get("image"), str):
                raise ValueError(f"{path} line {n}: a record needs a 'prompt' string and an 'image' path")
            self.records.append((record["prompt"], record["image"]))
        if not self.records:
            raise ValueError(f"{path} holds no caption-image records")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        prompt, image = self.records[index]
        path = image if os.path.isabs(image) else os.path.join(self.root, image)
        with Image.open(path) as im:
            im = im.convert("RGB").resize((self.width, self.height), Image.BICUBIC)
            return prompt, np.asarray(im, np.uint8)


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file, one per line; a blank line inside the file is an error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file {path} not found")
    lines = open(path).read().rstrip("\n").split("\n")
    blank = [n for n, line in enumerate(lines, 1) if not line.strip()]
    if blank:
        raise ValueError(f"{path}: blank lines {blank[:5]}; write one prompt per line")
    return [line.strip() for line in lines]


class FinetuneExamples:
    """Example i: prompt i mod P with its tokens (and references), and anchor pair i."""

    def __init__(self, length: int, gen_tokens: dict, rm_tokens: dict, references: np.ndarray | None,
                 anchor: Sequence | None, tokenize: Callable[[list[str]], dict]):
        self.length, self.gen_tokens, self.rm_tokens = length, gen_tokens, rm_tokens
        self.references, self.anchor, self.tokenize = references, anchor, tokenize
        self.num_prompts = len(next(iter(gen_tokens.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        p = int(index) % self.num_prompts
        example = {"prompt": np.int32(p),
                   "gen": {k: v[p] for k, v in self.gen_tokens.items()},
                   "rm": {k: v[p] for k, v in self.rm_tokens.items()}}
        if self.references is not None:
            example["refs"] = self.references[p]
        if self.anchor is not None:
            caption, image = self.anchor[int(index) % len(self.anchor)]
            example["anchor_image"] = image
            example["anchor_gen"] = {k: v[0] for k, v in self.tokenize([caption]).items()}
        return example
