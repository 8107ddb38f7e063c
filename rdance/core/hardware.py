"""Accelerator chips and what a compiled program costs on them: the chip table (peak dense bf16
FLOP/s, HBM bandwidth and size per chip), the local chip, a compiled step's FLOPs and bytes from
XLA's cost analysis, model FLOPs utilisation (MFU) and a roofline estimate of step time.

What ``compiled.cost_analysis()`` counts (measured with jax 0.10 on 8 fake CPU devices,
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, and on a v5e:2x2 TPU topology compile):
the FLOPs and bytes of **one device's** SPMD program, not the global computation. A 256x512 @
512x1024 matmul (2.68e8 FLOPs) split 8 ways over the batch reports 3.36e7 FLOPs (1/8); split
over the contracting dimension, 3.38e7 (1/8, plus the partial-sum reduction); on 4 v5e chips,
1/4. So per-device FLOPs over the step time is per-device FLOP/s, compared with one chip's peak.

Loops: XLA's cost analysis counts the body of a while loop once, whatever its trip count
(measured: a ``lax.scan`` of 16 matmuls reports the FLOPs of one, on CPU and on TPU), and rdance
scans over layers and sampler steps. ``step_cost`` therefore adds the matmul and convolution
FLOPs of each loop's later iterations, read from the compiled HLO with the loop's trip count
(``loop_costs``); a loop whose trip count cannot be read stays counted once and is reported
(``StepCost.unknown_loops``). Bytes accessed are not corrected: for a step with loops they are a
lower bound, and so is the roofline's memory time.
"""
from __future__ import annotations

import dataclasses
import math
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
    """What one call of a compiled program costs per device: XLA's cost analysis, with the
    iterations of while loops it leaves out added back where the trip count is known."""
    flops: float             # FLOPs of one device's program
    bytes_accessed: float    # bytes one device's program reads and writes (loop bodies once: a lower bound)
    loops: int = 0           # while loops in the compiled program
    unknown_loops: int = 0   # of which the trip count is unknown: their later iterations are not counted
    loop_flops: float = 0.0  # of ``flops``, what the later iterations of loops added (matmuls and convolutions)


def step_cost(compiled) -> StepCost | None:
    """Per-device FLOPs and bytes of ``compiled`` (a ``jax.stages.Compiled``) from its cost
    analysis, or None when the backend gives none. ``cost_analysis()`` is a dict in current jax
    and was a list of one dict per program in older releases; both are read. The analysis counts
    a while loop's body once; ``loop_costs`` of the compiled HLO adds the matmul and convolution
    FLOPs of the iterations after the first, where the trip count is known. Bytes are left as the
    analysis counts them (a loop body once): a lower bound for a step with loops."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 (a backend without a cost model raises; the loop runs without it)
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    try:
        loops = loop_costs(compiled.as_text())
    except Exception:  # noqa: BLE001 (HLO text this parser does not read: the analysis as it is)
        loops = LoopCosts()
    return StepCost(float(analysis["flops"]) + loops.flops, float(analysis.get("bytes accessed", 0.0)),
                    loops.loops, loops.unknown, loops.flops)


# --- while loops in compiled HLO text --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoopCosts:
    loops: int = 0
    unknown: int = 0        # loops whose trip count could not be read
    flops: float = 0.0      # matmul and convolution FLOPs of iterations 2..n of every loop


_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_SHAPE = re.compile(r"\b(pred|[a-z]+\d+(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def loop_costs(hlo_text: str) -> LoopCosts:
    """What the cost analysis leaves out of ``hlo_text`` (a compiled module's ``as_text()``): the
    iterations of each while loop after the first. Trip counts come from the loop's
    ``known_trip_count`` (XLA:CPU writes it) or from a condition ``i < N`` with a constant N
    (libtpu's HLO, counting from 0). FLOPs are those of dots, convolutions (TPU dots are
    convolutions) and cuBLAS gemm custom calls (read, not tested here: no GPU): 2 x output
    elements x contracted size. Measured on a scan of L matmuls and its gradient (XLA:CPU and a
    v5e compile): the count with this added is the analytic 2*M*K*N*3L; without it, that of one
    iteration."""
    computations: dict[str, list[tuple[str, str, str, str]]] = {}
    shapes: dict[str, list[int]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = computations.setdefault(header.group(1), [])
            continue
        match = _INSTRUCTION.match(line)
        if match is None or current is None:
            continue
        name, result, op, rest = match.groups()
        current.append((name, result, op, rest))
        shape = _SHAPE.match(result.strip())
        if shape:
            shapes[name] = [int(d) for d in shape.group(2).split(",") if d]

    def dims(name):
        return shapes.get(name, [])

    def operands(rest):
        return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])

    def matmul_flops(result, op, rest) -> float:
        out = _SHAPE.search(result)
        if out is None:
            return 0.0
        out_elements = math.prod(int(d) for d in out.group(2).split(",") if d)
        args = operands(rest)
        if op == "dot" or (op == "custom-call" and "lhs_contracting_dimensions" in rest):
            found = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest) or \
                re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', rest)
            if not found or not args:
                return 0.0
            lhs = dims(args[0])
            contracted = [int(d.strip().strip('"')) for d in found.group(1).split(",") if d.strip()]
            return 2.0 * out_elements * math.prod(lhs[d] for d in contracted if d < len(lhs))
        if op == "convolution":
            labels = re.search(r"dim_labels=[^_]*_([^-]*)->", rest)
            if not labels or len(args) < 2:
                return 0.0
            rhs = dims(args[1])
            o = labels.group(1).find("o")
            if not rhs or o < 0 or o >= len(rhs):
                return 0.0
            return 2.0 * out_elements * math.prod(rhs) / rhs[o]
        return 0.0

    def trip_count(rest) -> int | None:
        known = _TRIP.search(rest)
        if known:
            return int(known.group(1))
        condition = re.search(r"condition=%?([\w.\-]+)", rest)
        body = computations.get(condition.group(1), []) if condition else []
        bounds = [re.search(r"constant\((\d+)\)", r) or re.match(r"(\d+)\)", r) for _, _, o, r in body if o == "constant"]
        compares = [r for _, _, o, r in body if o == "compare"]
        if len(bounds) == 1 and bounds[0] and len(compares) == 1 and "direction=LT" in compares[0]:
            return int(bounds[0].group(1))
        return None

    memo: dict = {}
    counted = {"loops": 0, "unknown": 0}

    def cost(computation: str, repeat: bool) -> float:
        """Matmul FLOPs of one run of ``computation``; loops run their trip count when ``repeat``,
        else once."""
        key = (computation, repeat)
        if key in memo:
            return memo[key]
        memo[key] = 0.0   # a cycle (none in HLO) would stop here
        flops = 0.0
        for name, result, op, rest in computations.get(computation, []):
            flops += matmul_flops(result, op, rest)
            times = 1
            if op == "while":
                trips = trip_count(rest)
                if not repeat:
                    counted["loops"] += 1
                    counted["unknown"] += trips is None
                times = trips if repeat and trips else 1
            callees = [(c, kind) for kind, c in _CALLS.findall(rest) if kind != "condition"]
            branches = _BRANCHES.search(rest)
            if branches:
                callees += [(c.strip().lstrip("%"), "branch") for c in branches.group(1).split(",") if c.strip()]
            for callee, _ in callees:
                flops += times * cost(callee, repeat)
        memo[key] = flops
        return flops

    entry = next((h.group(1) for line in hlo_text.splitlines() if line.startswith("ENTRY")
                  for h in [_HEADER.match(line)] if h), None)
    if entry is None:
        return LoopCosts()
    once = cost(entry, False)
    return LoopCosts(counted["loops"], counted["unknown"], cost(entry, True) - once)


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
