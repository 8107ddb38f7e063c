"""Prompt sets as users have them, for evaluating a generator: a plain text file (one prompt per
line), JSONL (one object per line with a ``prompt`` field; GenEval's ``evaluation_metadata.jsonl``
is one, and each object is kept whole so GenEval's layout can be written back), or a CSV/TSV with
a header (DrawBench: ``Prompts,Category``; PartiPrompts: ``Prompt\\tCategory\\tChallenge\\tNote``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")


@dataclasses.dataclass(frozen=True)
class PromptItem:
    prompt: str
    category: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)   # the source row, e.g. GenEval's object


class PromptFileError(ValueError):
    """A prompt file that cannot be read: the file, the line, the problem and the fix."""


def read_prompt_set(path) -> list[PromptItem]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file; give a .txt, .jsonl, .csv or .tsv prompt file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from e
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items = _jsonl(path, text)
    elif suffix in (".csv", ".tsv"):
        items = _table(path, text, "\t" if suffix == ".tsv" else ",")
    else:
        items = [PromptItem(line.strip()) for line in text.splitlines() if line.strip()]
    if not items:
        raise PromptFileError(f"{path}: no prompts in it")
    return items


def _jsonl(path: Path, text: str) -> list[PromptItem]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{n}: not JSON ({e}); each line must be one JSON object") from e
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise PromptFileError(f"{path}:{n}: needs a non-empty string field 'prompt' (GenEval's metadata "
                                  "lines have one)")
        items.append(PromptItem(row["prompt"].strip(), str(row.get("tag", row.get("category", ""))), row))
    return items


def _table(path: Path, text: str, delimiter: str) -> list[PromptItem]:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    column = next((columns[c] for c in PROMPT_COLUMNS if c in columns), None)
    if column is None:
        raise PromptFileError(f"{path}: no prompt column among {reader.fieldnames}; name it one of "
                              f"{', '.join(c.capitalize() for c in PROMPT_COLUMNS)} (DrawBench: Prompts, "
                              "PartiPrompts: Prompt)")
    category = columns.get("category")
    items = []
    for n, row in enumerate(reader, 2):
        prompt = (row.get(column) or "").strip()
        if not prompt:
            raise PromptFileError(f"{path}:{n}: empty prompt in column {column!r}; fill it or delete the line")
        items.append(PromptItem(prompt, (row.get(category) or "").strip() if category else "", dict(row)))
    return items
