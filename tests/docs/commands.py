"""The commands README.md and docs/*.md show, read out of their code blocks and inline code."""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex

from tests.conftest import REPO

CONSOLE_SCRIPTS = ("rdance-fit", "rdance-generate", "rdance-score")
FENCED = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
MODULE = re.compile(r"^rdance(\.\w+)+$")      # not a placeholder such as rdance.<name>


@dataclasses.dataclass(frozen=True)
class Command:
    """One documented invocation: what runs (``rdance.run.demo``, ``rdance-score``, ``launch/tpu.py run``)
    and the flags the docs give it."""
    entry: str
    flags: tuple[str, ...]
    where: str


def doc_files() -> list[str]:
    return [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def shell_lines(text: str) -> list[str]:
    """Command lines of fenced blocks (continuations joined, comments dropped) and inline spans."""
    lines = []
    for language, block in FENCED.findall(text):
        if language not in ("bash", "sh", "shell", ""):
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split(" #")[0].strip() for line in joined.splitlines() if not line.lstrip().startswith("#")]
    lines += [span.replace("\n", " ") for span in INLINE.findall(FENCED.sub("", text))]
    return [part.strip() for line in lines for part in line.split("&&")]


def flag_names(tokens: list[str]) -> tuple[str, ...]:
    """``--config.train.steps=3`` is an override of ``--config``; ``--x=1`` and ``--x`` name ``x``."""
    names = []
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0]
            names.append("config" if name.startswith("config.") else name)
    return tuple(dict.fromkeys(names))


def parse(line: str, where: str) -> list[Command]:
    try:
        tokens = [t for t in shlex.split(line) if not t.startswith("$")]
    except ValueError:              # an unfinished inline fragment, not a command
        return []
    if tokens[:2] == ["python", "-m"] and len(tokens) > 2 and MODULE.match(tokens[2]):
        return [Command(tokens[2], flag_names(tokens[3:]), where)]
    if tokens and tokens[0] in CONSOLE_SCRIPTS:
        return [Command(tokens[0], flag_names(tokens[1:]), where)]
    if tokens[:2] == ["python", "launch/tpu.py"] and len(tokens) > 2:
        own, _, entry = _split_at_double_dash(tokens[3:])
        commands = [Command(f"launch/tpu.py {tokens[2]}", flag_names(own), where)]
        if entry and entry[0].startswith("rdance."):
            commands.append(Command(entry[0], flag_names(entry[1:]), where))
        return commands
    return []


def _split_at_double_dash(tokens):
    if "--" in tokens:
        i = tokens.index("--")
        return tokens[:i], "--", tokens[i + 1:]
    return tokens, "", []


def documented_commands() -> list[Command]:
    commands = []
    for path in doc_files():
        text = open(path).read()
        for line in shell_lines(text):
            commands += parse(line, os.path.relpath(path, REPO))
    return commands
