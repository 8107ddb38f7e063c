"""Child processes of the demo and ablation tests: one CPU device, a compilation cache shared by
the session (the tiny demo and the tiny ablation compile the same programs)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def environment(cache: str | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run_module(module: str, *args, cache: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=environment(cache),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def demo(tmp_path_factory, compile_cache):
    """The CI variant of the demo, run once: (workdir, console output)."""
    workdir = tmp_path_factory.mktemp("demo")
    result = run_module("rdance.run.demo", "--config=experiments/demo.py:ci", f"--workdir={workdir}", cache=compile_cache)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir, result.stdout
