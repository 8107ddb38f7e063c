"""The launcher's table of slices against libtpu's own description of each topology."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


PROCESS_COUNTS = """
import json, sys
from jax.experimental import topologies
counts = {}
for name in sys.argv[1:]:
    devices = topologies.get_topology_desc(topology_name=name, platform="tpu").devices
    counts[name] = len({d.process_index for d in devices})
print(json.dumps(counts))
"""


def test_workers_per_slice_match_libtpu(tpu):
    """One rdance process per TPU VM: the launcher's worker count is what --distributed will find.

    libtpu cannot describe a 1-chip (1x1) slice; and for the 8-chip v5e/v6e slices it describes the
    two-VM layout that only GKE offers, while the TPU API's v5litepod-8 and v6e-8 are one VM.
    """
    table = {a.name: a for a in tpu.ACCELERATORS.values() if a.chips > 1}
    # No TPU is opened: describing topologies must not wait on another process's libtpu lock.
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    result = subprocess.run([sys.executable, "-c", PROCESS_COUNTS, *{a.topology for a in table.values()}],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    one_vm_in_the_tpu_api = {"v5litepod-8", "v6e-8"}
    for name, acc in table.items():
        expected = 1 if name in one_vm_in_the_tpu_api else counts[acc.topology]
        assert acc.workers == expected, (name, acc.topology, counts[acc.topology])
    assert counts["v5e:2x4"] == counts["v6e:2x4"] == 2
    assert {n: table[n].workers for n in ("v4-8", "v5p-64", "v5litepod-16", "v6e-256")} == {
        "v4-8": 1, "v5p-64": 8, "v5litepod-16": 4, "v6e-256": 64}


def test_accelerator_names_follow_gcloud(tpu):
    """v4 and v5p count TensorCores (two per chip), v5e (v5litepod) and v6e count chips."""
    for acc in tpu.ACCELERATORS.values():
        prefix, size = acc.name.rsplit("-", 1)
        assert int(size) == acc.chips * (2 if prefix in ("v4", "v5p") else 1), acc
        chips_in_topology = 1
        for dim in acc.topology.split(":")[1].split("x"):
            chips_in_topology *= int(dim)
        assert chips_in_topology == acc.chips, acc
