r"""Does a config fit on a TPU slice? Compile its train step for the slice's topology on this
machine (through libtpu, no TPU needed) and compare per-chip memory with the chip's HBM.

    python -m rdance.run.fit_check --config=experiments/toy.py --topology=v5p:2x2x2
    python -m rdance.run.fit_check --entry=rdance.run.train_toy --config=... --topology=v5e:4x4 \
        --config.mesh.shape="(1,-1,4)"
    python -m rdance.run.fit_check --entry=rdance.run.finetune --config=experiments/finetune_flux_dev.py:8b \
        --topology=v5p:4x4x4 --config.mesh.shape="(1,-1,4)"

``--entry`` names the entrypoint module whose ``make_task(config)`` defines the model, loss and
data; the mesh shape and rules come from the config, as they would on the slice. The fine-tuning
entrypoint's step (generator, frozen text encoders and VAE, frozen RM) is built from shapes alone
by :mod:`rdance.train.finetune_fit`. Attention ``auto`` chooses as on the slice (splash, TPU's
Pallas kernel), not as on this machine's CPU.
"""
from __future__ import annotations

import importlib
import math
import re
import sys
import time

import jax
import numpy as np
from absl import flags

import rdance.world  # noqa: F401  (registers the 'world' generator kind a fine-tuning config may name)
from rdance.run import cli

from rdance.core import console, sharding
from rdance.models import attention
from rdance.train.loop import batch_spec
from rdance.train.optim import make_optimizer
from rdance.train.state import StateFactory
from rdance.train.step import compile_train_step, make_train_step, memory_per_device

TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x2, v5e:4x4, v6e:2x2")
ENTRY = flags.DEFINE_string("entry", "rdance.run.train_toy", "entrypoint module defining make_task(config)")
flags.declare_key_flag("config")  # defined by rdance.run.cli; --help lists it with this module's own

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
    started = time.perf_counter()
    memory = compiled_memory(lambda: compile_train_step(make_train_step(factory, task.loss_fn, schedule),
                                                        factory, spec))
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(factory.abstract.params))
    return dict(topology=topology, devices=len(devices), mesh=dict(mesh.shape), params=params,
                hbm=int(hbm), compile_seconds=time.perf_counter() - started, **memory)


def finetune_fit_report(config, topology: str) -> dict:
    """The fine-tuning step (rdance.run.finetune) of ``config``, built from shapes for ``topology``."""
    devices, hbm = topology_devices(topology)
    return finetune_step_report(config, devices, hbm, topology)


def finetune_step_report(config, devices, hbm: float, topology: str = "") -> dict:
    """The fine-tuning step of ``config`` built from shapes for ``devices``, measured against
    ``hbm`` bytes per device."""
    from rdance.train import finetune_fit
    started = time.perf_counter()
    step = finetune_fit.lower_step(config, devices)
    memory = compiled_memory(lambda: step.lowered.compile(compiler_options=step.compiler_options))
    return dict(topology=topology, devices=len(devices), mesh=dict(step.mesh.shape), step=step.batch,
                params=sum(step.params.values()), params_by_part=step.params, hbm=int(hbm),
                compile_seconds=time.perf_counter() - started, **memory)


def compiled_memory(compile_fn) -> dict:
    """Per-device memory of the program ``compile_fn()`` compiles, or ``{'out_of_memory': why}``
    when the TPU compiler itself gives up because the program cannot fit in HBM."""
    try:
        return memory_per_device(compile_fn())
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {"out_of_memory": str(e).strip().splitlines()[0]}


def fits(r: dict) -> bool:
    return "out_of_memory" not in r and r["peak"] <= r["hbm"]


# Entrypoints whose step is not a Task's train step, and how to measure theirs.
STEP_REPORTS = {"rdance.run.finetune": finetune_fit_report}


def _element(task):
    example = task.source[0]
    return task.transform(example) if task.transform else example


def format_report(r: dict) -> str:
    def gib(b):
        return f"{b / 2**30:9.3f} GiB" if b >= 2**30 else f"{b / 2**20:9.3f} MiB"
    rows = [("topology", r["topology"]), ("devices", str(r["devices"])), ("mesh", str(r["mesh"]))]
    rows += [("step", r["step"])] if "step" in r else []
    rows += [("parameters", f"{r['params']:,}")]
    rows += [(f"  {part}", f"{n:,}") for part, n in r.get("params_by_part", {}).items()]
    if "out_of_memory" in r:
        rows += [("HBM per device", gib(r["hbm"])), ("fits", f"NO: the compiler gave up: {r['out_of_memory']}")]
    else:
        rows += [("arguments", gib(r["argument"])),
                 ("outputs", gib(r["output"])), ("aliased (donated)", gib(r["alias"])),
                 ("temporaries", gib(r["temp"])), ("code", gib(r["generated_code"])),
                 ("peak per device", gib(r["peak"])), ("HBM per device", gib(r["hbm"])),
                 ("fits", f"{'yes' if fits(r) else 'NO, it does not fit'} ({100 * r['peak'] / r['hbm']:.2f}% of HBM)")]
    rows += [("compile", f"{r['compile_seconds']:.1f} s")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv):
    del argv
    if cli.CONFIG.value is None:
        sys.exit("error: --config is required")
    config = cli.CONFIG.value
    try:
        with attention.target_platform("tpu"):
            if ENTRY.value in STEP_REPORTS:
                report = STEP_REPORTS[ENTRY.value](config, TOPOLOGY.value)
            else:
                report = fit_report(config, importlib.import_module(ENTRY.value).make_task(config),
                                    TOPOLOGY.value)
    except (ValueError, FileNotFoundError, sharding.ShardingError) as e:
        sys.exit(f"error: {e}")
    print(format_report(report))
    sys.exit(0 if fits(report) else 1)


def run():
    console.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
