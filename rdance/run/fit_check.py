r"""Does a config fit on a TPU slice? Compile its train step for the slice's topology on this
machine (through libtpu, no TPU needed) and compare per-chip memory with the chip's HBM. It also
prints the compiled step's FLOPs and bytes accessed per device (XLA's cost analysis) and a
roofline estimate of the step time per chip: max(FLOPs / peak FLOP/s, bytes / HBM bandwidth),
with the chip's figures from rdance.core.hardware. The estimate is a lower bound on a step's
time (no communication, no overlap loss; a loop's bytes are counted once).

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

import dataclasses
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

from rdance.core import console, hardware, sharding
from rdance.models import attention
from rdance.train.loop import batch_spec
from rdance.train.optim import make_optimizer
from rdance.train.state import StateFactory
from rdance.train.step import compile_train_step, make_train_step, memory_per_device

TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x2, v5e:4x4, v6e:2x2")
ENTRY = flags.DEFINE_string("entry", "rdance.run.train_toy", "entrypoint module defining make_task(config)")
flags.declare_key_flag("config")  # defined by rdance.run.cli; --help lists it with this module's own

# The TPU generations a topology may name: keys of rdance.core.hardware.CHIPS (HBM, peak, bandwidth).
TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")


def topology_devices(topology: str) -> tuple[list, hardware.Chip]:
    """The devices of a TPU topology and one device's share of a chip (HBM, peak FLOP/s, HBM
    bandwidth: the chip's figures x chips / devices, the chip's own where a device is a chip)."""
    match = re.fullmatch(rf"({'|'.join(TPU_GENERATIONS)}):(\d+(?:x\d+)+)", topology or "")
    if not match:
        raise ValueError(f"--topology={topology!r}: expected GEN:AxB[xC] with GEN in "
                         f"{list(TPU_GENERATIONS)}, e.g. v5p:2x2x2 or v5e:4x4")
    from jax.experimental import topologies
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    chips = math.prod(int(d) for d in match.group(2).split("x"))
    chip, share = hardware.CHIPS[match.group(1)], chips / len(devices)
    return devices, dataclasses.replace(chip, peak_flops=chip.peak_flops * share,
                                        hbm_bandwidth=chip.hbm_bandwidth * share, hbm_bytes=chip.hbm_bytes * share)


def fit_report(config, task, topology: str) -> dict:
    devices, chip = topology_devices(topology)
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    factory = StateFactory(task.make_model, tx, mesh, config.mesh.rules, config.seed)
    local = jax.tree.map(lambda x: np.zeros((config.data.global_batch_size, *np.shape(x)), np.asarray(x).dtype),
                         _element(task))
    spec = batch_spec(local, mesh)
    started = time.perf_counter()
    compiled = compiled_report(lambda: compile_train_step(make_train_step(factory, task.loss_fn, schedule),
                                                          factory, spec), chip)
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(factory.abstract.params))
    return dict(topology=topology, devices=len(devices), mesh=dict(mesh.shape), params=params,
                hbm=int(chip.hbm_bytes), compile_seconds=time.perf_counter() - started, **compiled)


def finetune_fit_report(config, topology: str) -> dict:
    """The fine-tuning step (rdance.run.finetune) of ``config``, built from shapes for ``topology``."""
    devices, chip = topology_devices(topology)
    return finetune_step_report(config, devices, chip.hbm_bytes, topology, chip)


def finetune_step_report(config, devices, hbm: float, topology: str = "", chip: hardware.Chip | None = None) -> dict:
    """The fine-tuning step of ``config`` built from shapes for ``devices``, measured against
    ``hbm`` bytes per device (and, given ``chip``, one device's share of a chip, a roofline)."""
    from rdance.train import finetune_fit
    started = time.perf_counter()
    step = finetune_fit.lower_step(config, devices)
    compiled = compiled_report(lambda: step.lowered.compile(compiler_options=step.compiler_options), chip)
    return dict(topology=topology, devices=len(devices), mesh=dict(step.mesh.shape), step=step.batch,
                params=sum(step.params.values()), params_by_part=step.params, hbm=int(hbm),
                compile_seconds=time.perf_counter() - started, **compiled)


def compiled_report(compile_fn, chip: hardware.Chip | None = None) -> dict:
    """Per-device memory of the program ``compile_fn()`` compiles, its per-device cost (``cost``:
    FLOPs, bytes accessed, while loops) and, given one device's share of a chip, a roofline
    estimate of its time (``roofline``); or ``{'out_of_memory': why}`` when the TPU compiler
    itself gives up because the program cannot fit in HBM."""
    try:
        compiled = compile_fn()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {"out_of_memory": str(e).strip().splitlines()[0]}
    out: dict = memory_per_device(compiled)
    cost = hardware.step_cost(compiled)
    if cost is not None:
        out["cost"] = cost
        if chip is not None:
            out["roofline"] = dict(hardware.roofline_seconds(cost, chip.peak_flops, chip.hbm_bandwidth),
                                   peak_flops=chip.peak_flops, hbm_bandwidth=chip.hbm_bandwidth, chip=chip.name)
    return out


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
        rows += cost_rows(r)
    rows += [("compile", f"{r['compile_seconds']:.1f} s")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cost_rows(r: dict) -> list[tuple[str, str]]:
    """The report's rows on the step's cost: FLOPs and bytes per device, and the roofline estimate."""
    if "cost" not in r:
        return [("FLOPs per step", "unknown: this backend gives no cost analysis")]
    cost = r["cost"]
    rows = [("FLOPs per step", f"{cost.flops:.4g} per device (XLA cost analysis)"),
            ("bytes accessed", f"{_bytes(cost.bytes_accessed)} per device (XLA cost analysis)")]
    if "roofline" in r:
        e = r["roofline"]
        rows += [("roofline estimate",
                  f"{_ms(e['step_s'])} per step per chip, {e['bound']}-bound (estimate: the larger of compute "
                  f"{_ms(e['compute_s'])} at {e['peak_flops'] / 1e12:g} TFLOP/s and memory {_ms(e['memory_s'])} "
                  f"at {e['hbm_bandwidth'] / 1e9:g} GB/s, {e['chip']}; communication not counted)")]
    if cost.loops:
        known = cost.loops - cost.unknown_loops
        rows += [("loops", f"{cost.loops} while loop(s), {known} of known trip count, whose later iterations add "
                           f"{cost.loop_flops:.4g} FLOPs; bytes count each loop body once (a lower bound)")]
    if cost.unknown_loops:
        rows += [("lower bounds", f"{cost.unknown_loops} loop(s) of unknown trip count, counted once: "
                                  "FLOPs and the estimate are undercounted")]
    return rows


def _bytes(b: float) -> str:
    return f"{b / 2**30:.3f} GiB" if b >= 2**30 else f"{b / 2**20:.3f} MiB"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.3g} ms"


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
