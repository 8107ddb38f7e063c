"""On a CPU-only machine with libtpu installed (the test extra brings it), importing rdance keeps
libtpu's worker-hostname error out of the output and still lands on the CPU."""
import os
import subprocess
import sys

import pytest

from rdance.core import quiet_tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = "import rdance, jax; print(jax.default_backend())"


def run_probe(**env_changes):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(not quiet_tpu.cpu_is_the_only_backend(), reason="this machine has a TPU or a GPU plugin")
def test_no_libtpu_noise_on_a_cpu_machine():
    out = run_probe()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"
    assert "TPU_WORKER_HOSTNAMES" not in out.stderr and "INVALID_ARGUMENT" not in out.stderr, out.stderr


def test_only_an_unset_platform_is_chosen():
    assert quiet_tpu.platform_to_set(None, False, lambda: True) == "cpu"
    assert quiet_tpu.platform_to_set(None, False, lambda: False) is None      # a TPU or GPU could be used
    assert quiet_tpu.platform_to_set("tpu,cpu", False, lambda: True) is None  # the user's choice stands
    assert quiet_tpu.platform_to_set(None, True, lambda: True) is None        # too late to choose
