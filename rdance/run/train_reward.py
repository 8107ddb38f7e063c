"""Train a generative reward model (or the regressive baseline) on preference pairs.

    python -m rdance.run.train_reward --config=experiments/rm_smoke.py --workdir=/tmp/rm

The RM starts from an InternVL Hugging Face folder (``rm.pretrained``) or, for the smoke
config, from scratch with a word-level tokenizer built for the synthetic world. At the end the
trained model is exported to ``WORKDIR/export`` in the Hugging Face layout, which
``rdance.reward.RewardModel.from_pretrained`` and transformers both load. The pieces are built
by rdance.reward.recipe; data sources are opened through rdance.data.registry (the world's
forms, 'world', 'world:KIND+KIND' and 'world_captions', registered by importing rdance.world).
"""
from __future__ import annotations

import os

from absl import flags, logging

from rdance.run import cli

import rdance.world  # noqa: F401  (registers the world's data sources)
from rdance.core import console, sharding, status
from rdance.data import records
from rdance.reward import folder as rm_folder
from rdance.reward.recipe import RewardTraining
from rdance.train.loop import Task, train
from rdance.world.vlm import world_corpus

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)


def reward_training(config, workdir: str | None = None) -> RewardTraining:
    """The RM's pieces; a from-scratch model's tokenizer reads the synthetic world (moving too,
    when the data holds its clips)."""
    return RewardTraining.from_config(config, workdir, corpus=lambda: world_corpus(config.data))


def as_task(training: RewardTraining) -> Task:
    return Task(make_model=training.make_model, loss_fn=training.loss_fn, source=training.source,
                transform=training.builder, initial_params=training.initial_params)


def make_task(config, workdir: str | None = None) -> Task:
    """The training Task (``rdance.run.fit_check --entry=rdance.run.train_reward`` compiles it)."""
    return as_task(reward_training(config, workdir))


def main(argv):
    del argv
    config, workdir = cli.start()
    records.name_options(allow_outside_paths="--config.data.allow_outside_paths=true",
                         max_image_pixels="--config.data.max_image_pixels=N")
    with records.pixel_limit(config.data.max_image_pixels):
        run(config, workdir)


def run(config, workdir: str) -> None:
    training = reward_training(config, workdir)
    task = as_task(training)
    if training.eval_sets:
        task.evaluate = training.evaluator(sharding.make_mesh(config.mesh.shape), config.data.eval_batch_size)
    result = train(config, workdir, task)
    status.exit_if_preempted(result.preempted)
    export_dir = os.path.join(workdir, "export")
    rm_folder.export(result.state.params, training.folder, export_dir, config)
    logging.info("exported the reward model to %s", export_dir)


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
