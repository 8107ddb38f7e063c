"""TFLOP/s per device and MFU in the training loop's metrics, from the compiled step's cost analysis.

The model is a chain of bias-free matmuls trained by the real loop (``loop.train``) on 8 fake
devices, FSDP over all 8. What the analytic count counts: the matmuls only, per device (the
global count over 8, as the cost analysis counts one device's program): forward 2*B*K*N per
layer; backward 2x that (input and weight gradients), except the first layer, whose input needs
no gradient (1x). The rest (the loss, the gradient norm, AdamW's per-parameter arithmetic) is
under 2% here and inside the 5% tolerance.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import toy
from rdance.core import hardware
from rdance.models.layers import Linear
from rdance.train import loop
from tests.conftest import metrics_by_step

WIDTHS = (256, 512, 512, 64)
BATCH = 256
STEPS, LOG_EVERY = 6, 3


class Chain(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([
            Linear(a, b, axes=("embed", "mlp") if i % 2 == 0 else ("mlp", "embed"), rngs=rngs, use_bias=False)
            for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:]))])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Regression:
    def __len__(self):
        return 4096

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        return {"x": rng.normal(size=WIDTHS[0]).astype(np.float32),
                "y": rng.normal(size=WIDTHS[-1]).astype(np.float32)}


def squared_error(model, batch, rng):
    del rng
    loss = jnp.mean(jnp.square(model(batch["x"]) - batch["y"]))
    return loss, {}


def analytic_flops_per_device(devices: int) -> float:
    forward = [2 * BATCH * k * n for k, n in zip(WIDTHS[:-1], WIDTHS[1:])]
    backward = [f if i == 0 else 2 * f for i, f in enumerate(forward)]
    return (sum(forward) + sum(backward)) / devices


def run(workdir, **train):
    c = toy.get_config()
    c.data.global_batch_size = BATCH
    c.mesh.shape = (1, -1, 1)
    c.optim.warmup_steps = 1
    c.train.update(dict(steps=STEPS, log_every=LOG_EVERY, checkpoint_every=100, async_checkpoints=False, **train))
    loop.train(c, str(workdir), loop.Task(make_model=lambda: Chain(nnx.Rngs(0)), loss_fn=squared_error,
                                          source=Regression()))
    by_step = metrics_by_step(workdir)
    return [by_step[s] for s in range(LOG_EVERY, STEPS + 1, LOG_EVERY)]


def flops_per_step(record) -> float:
    return record["tflops_per_device"] * 1e12 / record["steps_per_s"]


def summary(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trained ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def fake_chip(monkeypatch):
    """The CPU devices as a chip the table knows, with a 2 TFLOP/s peak."""
    chip = hardware.Chip("Fake chip", 2e12, 1e11, 2**30, "this test")
    monkeypatch.setitem(hardware.CHIPS, "fake", chip)
    monkeypatch.setitem(hardware.DEVICE_KINDS, jax.devices()[0].device_kind, "fake")
    return chip


def test_logged_flops_match_the_matmul_count_and_mfu_the_step_time(tmp_path, devices, fake_chip, caplog):
    caplog.set_level(logging.INFO)
    records = run(tmp_path)
    want = analytic_flops_per_device(len(devices))
    for record in records:
        assert flops_per_step(record) == pytest.approx(want, rel=0.05)
        # MFU is achieved FLOP/s (FLOPs per step over the mean step time of the interval) over the peak.
        step_time = 1 / record["steps_per_s"]
        assert record["mfu"] == pytest.approx(flops_per_step(record) / step_time / fake_chip.peak_flops, rel=1e-6)
        assert 0 < record["mfu"] < 1
    line = summary(caplog)
    assert f"trained {STEPS} steps: mean step time" in line and "MFU" in line and "(Fake chip)" in line
    # Where the FLOPs came from is logged before the loop.
    assert any("GFLOPs and" in r.getMessage() and "per device per step (XLA cost analysis)" in r.getMessage()
               for r in caplog.records)


def test_unknown_chip_gives_tflops_without_mfu(tmp_path, devices, caplog):
    caplog.set_level(logging.INFO)
    assert hardware.local_chip() is None     # 8 fake CPU devices: no peak in the table
    records = run(tmp_path)
    for record in records:
        assert record["tflops_per_device"] > 0 and "mfu" not in record
    line = summary(caplog)
    assert "TFLOP/s per device" in line and "no MFU" in line and "train.peak_tflops" in line


def test_configured_peak_gives_mfu_on_an_unknown_chip(tmp_path, devices, caplog):
    caplog.set_level(logging.INFO)
    records = run(tmp_path, peak_tflops=0.5)
    for record in records:
        assert record["mfu"] == pytest.approx(record["tflops_per_device"] / 0.5, rel=1e-6)
    assert "of 0.5 TFLOP/s (train.peak_tflops)" in summary(caplog)


def test_chip_table_names_the_device_kinds_jax_reports():
    assert hardware.chip_of("TPU v5 lite").name == "TPU v5e"
    assert hardware.chip_of("TPU v5").name == "TPU v5p"
    assert hardware.chip_of("TPU v6 lite").peak_flops == 918e12
    assert hardware.chip_of("NVIDIA H100 80GB HBM3").peak_flops == 989e12
    assert hardware.chip_of("NVIDIA H100 PCIe") is None      # another peak: not guessed
    assert hardware.chip_of("cpu") is None


def test_cost_analysis_counts_one_devices_program(devices):
    """The measurement the module docstring states: 8 ways split, 1/8 of the FLOPs."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(devices), ("d",))
    a, b = jax.ShapeDtypeStruct((256, 512), jnp.float32), jax.ShapeDtypeStruct((512, 1024), jnp.float32)
    one = hardware.step_cost(jax.jit(jnp.matmul).lower(a, b).compile())
    split = hardware.step_cost(jax.jit(jnp.matmul, in_shardings=(NamedSharding(mesh, P("d", None)),
                                                                   NamedSharding(mesh, P()))).lower(a, b).compile())
    assert one.flops == 2 * 256 * 512 * 1024 and split.flops == one.flops / 8
    assert one.bytes_accessed > 0 and one.loops == 0


def test_roofline_is_the_larger_of_compute_and_memory_time():
    cost = hardware.StepCost(flops=2e12, bytes_accessed=1e9, loops=0)
    assert hardware.roofline_seconds(cost, 1e12, 1e12) == {"compute_s": 2.0, "memory_s": 1e-3, "step_s": 2.0,
                                                           "bound": "compute"}
    assert hardware.roofline_seconds(cost, 1e15, 1e9)["bound"] == "memory"


@pytest.mark.parametrize("layers", [4, 16])
def test_scanned_layers_are_counted_every_iteration(layers):
    """XLA's cost analysis counts a while loop's body once; step_cost adds the later iterations'
    matmuls. A scan of L matmuls [M, K] @ [K, K] and its gradient: forward, input and weight
    gradients for every iteration (the scan's body is the same each time), 2*M*K*K*3L. (With one
    layer XLA removes the loop, and the first input gradient with it.)"""
    m, k = 128, 256

    def f(x, ws):
        return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0].sum()

    compiled = jax.jit(jax.grad(f, argnums=1)).lower(jax.ShapeDtypeStruct((m, k), jnp.float32),
                                                     jax.ShapeDtypeStruct((layers, k, k), jnp.float32)).compile()
    cost = hardware.step_cost(compiled)
    assert cost.flops == pytest.approx(2 * m * k * k * 3 * layers, rel=0.05)
    assert cost.unknown_loops == 0 and cost.loops == 2     # the forward scan and its transpose
    assert cost.loop_flops == 2 * m * k * k * 3 * (layers - 1)
