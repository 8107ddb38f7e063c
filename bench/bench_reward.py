"""Reward-model training step time: the smoke config and a ~100M-parameter config.

    python bench/bench_reward.py [--steps 5] [--configs smoke,100m]

Prints one table: parameters, pairs per step, compiled step time (median after a warm-up
step), pairs/s and achieved TFLOP/s (XLA's flop count of the compiled step / time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import rm_smoke  # noqa: E402
from rdance.core import sharding  # noqa: E402
from rdance.data.pipeline import host_batches  # noqa: E402
from rdance.train import loop  # noqa: E402
from rdance.train.optim import make_optimizer  # noqa: E402
from rdance.train.state import StateFactory  # noqa: E402
from rdance.train.step import compile_train_step, make_train_step  # noqa: E402
from rdance.run.train_reward import make_task  # noqa: E402

CONFIGS = {
    "smoke": {},
    # ~100M parameters: a 12-layer 768-wide LM and a 6-layer 384-wide vision tower.
    "100m": dict(patch_size=4, vision_hidden=384, vision_layers=6, vision_heads=6, text_hidden=768,
                 text_layers=12, text_heads=12, text_kv_heads=4),
}


def bench(name: str, steps: int) -> dict:
    config = rm_smoke.get_config()
    config.model.update(CONFIGS[name])
    if name != "smoke":
        config.data.global_batch_size = 8
    task = make_task(config, tempfile.mkdtemp())
    mesh = sharding.make_mesh((1, -1, 1))
    tx, schedule = make_optimizer(config.optim, 1000)
    factory = StateFactory(task.make_model, tx, mesh, config.mesh.rules, seed=0)
    data = iter(host_batches(task.source, global_batch_size=config.data.global_batch_size,
                             num_steps=steps + 1, seed=0, transform=task.transform))
    first = next(data)
    compiled = compile_train_step(make_train_step(factory, task.loss_fn, schedule), factory,
                                  loop.batch_spec(first, mesh))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops", float("nan"))
    state = factory.init()
    batch = sharding.global_batch(first, mesh)
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        batch = sharding.global_batch(next(data), mesh)
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    step = statistics.median(times)
    pairs = config.data.global_batch_size
    return dict(name=name, params=params, pairs=pairs, step=step, pairs_per_s=pairs / step,
                tflops=flops / step / 1e12)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--configs", default="smoke,100m")
    args = parser.parse_args()
    rows = [bench(name, args.steps) for name in args.configs.split(",")]
    print(f"\nRM training step on {jax.devices()[0].platform} ({os.cpu_count()} cores), float32, "
          f"median of {args.steps} steps")
    print(f"| config | params | pairs/step | step s | pairs/s | TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['pairs']} | {r['step']:.3f} | "
              f"{r['pairs_per_s']:.1f} | {r['tflops']:.3f} |")


if __name__ == "__main__":
    main()
