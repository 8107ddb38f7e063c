"""The demo's and the ablation's child processes: one CPU device, and the session's compilation
cache (the tiny demo and the tiny ablation compile the same programs)."""
import functools

import pytest

from tests import conftest

# Programs compiled in under a second are not worth a cache entry: the demo compiles hundreds.
run_module = functools.partial(conftest.run_module, devices=1, cache_min_seconds=1)


@pytest.fixture(scope="session")
def demo(tmp_path_factory, compile_cache):
    """The CI variant of the demo, run once: (workdir, console output)."""
    workdir = tmp_path_factory.mktemp("demo")
    result = run_module("rdance.run.demo", "--config=experiments/demo.py:ci", f"--workdir={workdir}", cache=compile_cache)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir, result.stdout
