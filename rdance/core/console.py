"""``app.run`` for the console scripts (setup.py), so that ``rdance-score --help`` shows what
``python -m rdance.run.score --help`` shows: the module's description and its flags, exit status 0.

absl's ``--help`` prints the ``__main__`` module's docstring and the key flags of the module it
names by ``sys.argv[0]``. Under ``python -m`` both are the entry module; under a console script
``__main__`` is pip's wrapper (no docstring) and ``sys.argv[0]`` the wrapper's path (no flags).
"""
from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags

HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def run(main: Callable, flags_parser: Callable[[list[str]], list[str]] | None = None):
    """Run ``main`` of an entry module as ``app.run`` does, with that module's help."""
    entry = sys.modules[main.__module__]
    wrapper = sys.modules["__main__"]
    if wrapper is not entry:
        wrapper.__doc__ = entry.__doc__
        for flag in flags.FLAGS.get_key_flags_for_module(entry.__name__):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=_help_exits_zero(flags_parser or parse_flags))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser with a one-line error for a bad command line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e} (see --help)")


def _help_exits_zero(parser):
    """absl exits 1 after printing the help it was asked for; asking is not an error. (The
    parsers exit with a message, never with status 1, for a bad command line.)"""
    def parse(argv: list[str]) -> list[str]:
        try:
            return parser(argv)
        except SystemExit as e:
            if e.code == 1 and _asks_for_help(argv):
                sys.exit(0)
            raise
    return parse


def _asks_for_help(argv: list[str]) -> bool:
    return any(arg.lstrip("-").split("=")[0] in HELP_FLAGS for arg in argv[1:] if arg.startswith("-"))
