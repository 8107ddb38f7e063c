"""Entrypoints: every ``python -m rdance.run.NAME`` command and console script, each a thin absl
main over the library below (``cli`` holds what they share)."""
