"""Toy regression: a small MLP learns a fixed random teacher network. It proves the harness
(mesh, sharded init, compiled step, checkpoints, resume, metrics) on something that trains in
seconds on a CPU.

    python -m rdance.run.train_toy --config=experiments/toy.py --workdir=/tmp/rdance_toy

Override any key, e.g. ``--config.train.steps=500 --config.mesh.shape="(2,2,2)"``.
"""
import ml_collections

from rdance.core.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(in_features=16, hidden=64, depth=3, out_features=4)
    c.data = dict(num_examples=8192, global_batch_size=32, seed=0)
    c.optim = dict(name="adamw", learning_rate=3e-3, schedule="cosine", warmup_steps=20,
                   b1=0.9, b2=0.999, weight_decay=0.0, grad_clip_norm=1.0)
    # (data, fsdp, tensor); -1 takes the remaining devices.
    c.mesh = dict(shape=(1, -1, 1), rules=DEFAULT_RULES)
    # train.peak_tflops: peak dense TFLOP/s per device that MFU is measured against; 0 takes the
    # local chip's from rdance.core.hardware (none for a CPU: TFLOP/s are logged, MFU is not).
    c.train = dict(steps=300, log_every=25, eval_every=0, checkpoint_every=100, keep_checkpoints=3,
                   async_checkpoints=True, peak_tflops=0.0)
    return c
