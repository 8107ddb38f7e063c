"""Train the toy MLP regressor: the foundation's proof that the harness works end to end.

    python -m rdance.run.train_toy --config=experiments/toy.py --workdir=/tmp/rdance_toy
"""
from __future__ import annotations

from absl import flags, logging
from flax import nnx

from rdance.run import cli

from rdance.core import console, status
from rdance.models.mlp import MLP, TeacherRegression, mse_loss
from rdance.train.loop import Task, train

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)


def make_task(config) -> Task:
    m = config.model
    source = TeacherRegression(config.data.num_examples, m.in_features, m.out_features,
                               seed=config.data.seed + 1)
    return Task(
        make_model=lambda: MLP(m.in_features, m.hidden, m.depth, m.out_features,
                               rngs=nnx.Rngs(config.seed)),
        loss_fn=mse_loss, source=source)


def main(argv):
    del argv
    config, workdir = cli.start()
    result = train(config, workdir, make_task(config))
    logging.info("done at step %d%s", result.step, " (preempted)" if result.preempted else "")
    status.exit_if_preempted(result.preempted)


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
