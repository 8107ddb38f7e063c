"""Accelerator chips and what a compiled program costs on them: the chip table (peak dense bf16
FLOP/s, HBM bandwidth and size per chip), the local chip, a compiled step's FLOPs and bytes from
XLA's cost analysis, model FLOPs utilisation (MFU) and a roofline estimate of step time.

What ``compiled.cost_analysis()`` counts (measured with jax 0.10 on 8 fake CPU devices,
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, and on a v5e:2x2 TPU topology compile):
the FLOPs and bytes of **one device's** SPMD program, not the global computation. A 256x512 @
512x1024 matmul (2.68e8 FLOPs) split 8 ways over the batch reports 3.36e7 FLOPs (1/8); split
over the contracting dimension, 3.38e7 (1/8, plus the partial-sum reduction); on 4 v5e chips,
1/4. So per-device FLOPs over the step time is per-device FLOP/s, compared with one chip's peak.

A caveat the numbers carry: XLA's cost analysis counts the body of a while loop once, whatever
its trip count (measured: a ``lax.scan`` of 16 matmuls reports the FLOPs of one, on CPU and on
TPU). Steps that scan over layers or sampler steps are undercounted by that factor;
``StepCost.loops`` says how many while loops the compiled program has, and the loop logs a
warning naming it, so a low MFU from a scanned model is not mistaken for a slow step.
"""
from __future__ import annotations

import dataclasses
import re

import jax


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float        # dense bf16 FLOP/s per chip (no sparsity)
    hbm_bandwidth: float     # bytes/s per chip
    hbm_bytes: float         # HBM per chip
    source: str              # where the figures come from


GiB = 2**30

# Figures as the vendors publish them. TPU "GB" of HBM is read as GiB, as the fit check always has
# (v4's page says GiB; a v5e's 16 GB is what JAX reports as about 15.75 GiB usable).
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 1200e9, 32 * GiB,
               "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2 at 1200 GBps per chip"),
    "v5e": Chip("TPU v5e", 197e12, 819e9, 16 * GiB,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM2 at 819 GBps per chip"),
    "v5p": Chip("TPU v5p", 459e12, 2765e9, 95 * GiB,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GB HBM2e at 2765 GBps per chip"),
    "v6e": Chip("TPU v6e", 918e12, 1638e9, 32 * GiB,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB HBM at 1638 GBps per chip"),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 3.35e12, 80e9,
                 "nvidia.com/en-us/data-center/h100 (SXM): 989 TFLOPS bf16 dense (1979 with sparsity), "
                 "80 GB HBM3 at 3.35 TB/s"),
    "h200": Chip("NVIDIA H200 SXM", 989e12, 4.8e12, 141e9,
                 "nvidia.com/en-us/data-center/h200 (SXM): 989 TFLOPS bf16 dense (1979 with sparsity), "
                 "141 GB HBM3e at 4.8 TB/s"),
}

# jax.devices()[0].device_kind -> CHIPS key. The TPU strings are libtpu's (v5e says "TPU v5 lite",
# v5p "TPU v5", v6e "TPU v6 lite": read from jax.experimental.topologies here); the GPU strings are
# CUDA's device names. An H100 PCIe or NVL ("NVIDIA H100 PCIe", "NVIDIA H100 NVL") has a lower peak
# and is deliberately not listed: unknown chips get TFLOP/s and no MFU, never a guessed peak.
DEVICE_KINDS = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e", "TPU v5e": "v5e",
    "TPU v5": "v5p", "TPU v5p": "v5p",
    "TPU v6 lite": "v6e", "TPU v6e": "v6e",
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H200": "h200",
}


def chip_of(device_kind: str) -> Chip | None:
    """The table's chip for a device kind, or None for one it does not know (a CPU)."""
    key = DEVICE_KINDS.get(device_kind.strip())
    return CHIPS[key] if key else None


def local_chip() -> Chip | None:
    """The chip this process runs on (``jax.devices()[0].device_kind``), or None when unknown.
    JAX's TPU devices are chips (v4 and v5p run their two TensorCores as one megacore device), and
    a GPU is a device, so per-chip figures are per-device figures."""
    return chip_of(jax.devices()[0].device_kind)


@dataclasses.dataclass(frozen=True)
class StepCost:
    """What XLA says one call of a compiled program costs, per device."""
    flops: float             # FLOPs of one device's program (loop bodies once: see ``loops``)
    bytes_accessed: float    # bytes one device's program reads and writes in memory
    loops: int               # while loops in the compiled program (their bodies are counted once)


def step_cost(compiled) -> StepCost | None:
    """Per-device FLOPs and bytes of ``compiled`` (a ``jax.stages.Compiled``) from its cost
    analysis, or None when the backend gives none. ``cost_analysis()`` is a dict in current jax
    and was a list of one dict per program in older releases; both are read."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 (a backend without a cost model raises; the loop runs without it)
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    try:
        loops = len(re.findall(r"\bwhile\(", compiled.as_text()))
    except Exception:  # noqa: BLE001
        loops = 0
    return StepCost(float(analysis["flops"]), float(analysis.get("bytes accessed", 0.0)), loops)


def roofline_seconds(cost: StepCost, peak_flops: float, hbm_bandwidth: float) -> dict[str, float]:
    """A lower bound on one step's time on one device: the step is at least as slow as its FLOPs at
    the peak and as its memory traffic at the HBM bandwidth (no overlap loss, no communication, no
    host time). An estimate, not a measurement."""
    compute, memory = cost.flops / peak_flops, cost.bytes_accessed / hbm_bandwidth
    return {"compute_s": compute, "memory_s": memory, "step_s": max(compute, memory),
            "bound": "compute" if compute >= memory else "memory"}


def utilisation(flops_per_step: float, seconds_per_step: float, peak_flops: float | None) -> dict[str, float]:
    """``tflops_per_device`` achieved (FLOPs per step per device over the mean step time) and, when
    the peak is known, ``mfu`` (that over the peak, a fraction)."""
    achieved = flops_per_step / seconds_per_step
    out = {"tflops_per_device": achieved / 1e12}
    if peak_flops:
        out["mfu"] = achieved / peak_flops
    return out
