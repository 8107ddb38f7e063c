"""Does a config fit on a TPU slice? Compile its train step for the slice's topology on this
machine (through libtpu, no TPU needed) and compare per-chip memory with the chip's HBM.

    python -m rdance.fit_check --config=experiments/toy.py --topology=v5p:2x2x2
    python -m rdance.fit_check --entry=rdance.train_toy --config=... --topology=v5e:4x4 \
        --config.mesh.shape="(1,-1,4)"

``--entry`` names the entrypoint module whose ``make_task(config)`` defines the model, loss and
data; the mesh shape and rules come from the config, as they would on the slice.
"""
from __future__ import annotations

import importlib
import math
import re
import sys

import jax
import numpy as np
from absl import app, flags

from rdance import cli, sharding
from rdance.train.loop import batch_spec
from rdance.train.optim import make_optimizer
from rdance.train.state import StateFactory
from rdance.train.step import compile_train_step, make_train_step, memory_per_device

TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x2, v5e:4x4, v6e:2x2")
ENTRY = flags.DEFINE_string("entry", "rdance.train_toy", "entrypoint module defining make_task(config)")

# HBM per chip in GiB, by the generation prefix of the topology name.
HBM_PER_CHIP_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def topology_devices(topology: str):
    match = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)", topology or "")
    if not match:
        raise ValueError(f"--topology={topology!r}: expected GEN:AxB[xC] with GEN in "
                         f"{sorted(HBM_PER_CHIP_GIB)}, e.g. v5p:2x2x2 or v5e:4x4")
    from jax.experimental import topologies
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    chips = math.prod(int(d) for d in match.group(2).split("x"))
    hbm_per_device = HBM_PER_CHIP_GIB[match.group(1)] * 2**30 * chips / len(devices)
    return devices, hbm_per_device


def fit_report(config, task, topology: str) -> dict:
    devices, hbm = topology_devices(topology)
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    factory = StateFactory(task.make_model, tx, mesh, config.mesh.rules, config.seed)
    local = jax.tree.map(lambda x: np.zeros((config.data.global_batch_size, *np.shape(x)), np.asarray(x).dtype),
                         _element(task))
    spec = batch_spec(local, mesh)
    compiled = compile_train_step(make_train_step(factory, task.loss_fn, schedule), factory, spec)
    mem = memory_per_device(compiled)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(factory.abstract.params))
    return dict(topology=topology, devices=len(devices), mesh=dict(mesh.shape), params=params,
                hbm=int(hbm), **mem)


def _element(task):
    example = task.source[0]
    return task.transform(example) if task.transform else example


def format_report(r: dict) -> str:
    def gib(b):
        return f"{b / 2**30:9.3f} GiB" if b >= 2**30 else f"{b / 2**20:9.3f} MiB"
    rows = [("topology", r["topology"]), ("devices", str(r["devices"])), ("mesh", str(r["mesh"])),
            ("parameters", f"{r['params']:,}"), ("arguments", gib(r["argument"])),
            ("outputs", gib(r["output"])), ("aliased (donated)", gib(r["alias"])),
            ("temporaries", gib(r["temp"])), ("code", gib(r["generated_code"])),
            ("peak per device", gib(r["peak"])), ("HBM per device", gib(r["hbm"])),
            ("fits", f"{'yes' if r['peak'] <= r['hbm'] else 'NO'} ({100 * r['peak'] / r['hbm']:.2f}% of HBM)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv):
    del argv
    if cli.CONFIG.value is None:
        sys.exit("error: --config is required")
    task = importlib.import_module(ENTRY.value).make_task(cli.CONFIG.value)
    try:
        report = fit_report(cli.CONFIG.value, task, TOPOLOGY.value)
    except (ValueError, sharding.ShardingError) as e:
        sys.exit(f"error: {e}")
    print(format_report(report))
    sys.exit(0 if report["peak"] <= report["hbm"] else 1)


def run():
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
