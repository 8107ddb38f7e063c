"""Train a generative reward model (or the regressive baseline) on preference pairs.

    python -m rdance.run.train_reward --config=experiments/rm_smoke.py --workdir=/tmp/rm

The RM starts from an InternVL Hugging Face folder (``rm.pretrained``) or, for the smoke
config, from scratch with a word-level tokenizer built for the synthetic world. At the end the
trained model is exported to ``WORKDIR/export`` in the Hugging Face layout, which
``rdance.reward.RewardModel.from_pretrained`` and transformers both load.
"""
from __future__ import annotations

import json
import os
import tempfile

import jax
from absl import flags, logging
from flax import nnx

from rdance.run import cli

from rdance.core import console, status
from rdance.data import records
from rdance.data.records import JsonlRecords
from rdance.world.pairs import PreferencePairs, WorldCaptions
from rdance.world.prompts import KINDS
from rdance.reward import folder as rm_folder
from rdance.world import vlm
from rdance.reward.task import Evaluator, LossSpec, make_loss_fn, row_spec_from_config
from rdance.reward.templates import TokenTemplate
from rdance.reward.rows import RowBuilder
from rdance.models.internvl.api import checkpoint_policy
from rdance.models.internvl.config import load_config
from rdance.reward.model import RewardNet
from rdance.train.loop import Task, train

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)


def open_source(spec: str, data, *, seed: int, size: int, noise: float, train: bool = False):
    """Where pairs come from:
    'world' or 'world:relation+count' (synthetic pairs, by prompt kinds); 'world_captions'
    (images and what they show, to pretrain a from-scratch VLM); a .jsonl file (see
    rdance.data.records); 'tfds:DATA_DIR:FORMAT[:SPLIT]', a set converted by
    ``python -m rdance.run.preference_set`` (Pick-a-Pic v2, HPDv2, ImageRewardDB, JSONL)."""
    if spec.startswith("tfds:"):
        from rdance.run.preference_set import PreferenceSource
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"data source {spec!r}: use tfds:DATA_DIR:FORMAT[:SPLIT]")
        return PreferenceSource(parts[1], parts[2], parts[3] if len(parts) == 4 else "train")
    if spec == "world_captions":
        return WorldCaptions(size, seed=seed, size=data.image_size, question_share=data.question_share)
    if spec == "world" or spec.startswith("world:"):
        kinds = tuple(spec.split(":", 1)[1].split("+")) if ":" in spec else KINDS
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"data source {spec!r}: unknown prompt kinds {sorted(unknown)}; known {KINDS}")
        return PreferencePairs(size, seed=seed, size=data.image_size, label_noise=noise, kinds=kinds,
                               clean_share=data.clean_share,
                               mistake_weights=dict(data.mistake_weights) if train else None)
    if spec.endswith(".jsonl"):
        return JsonlRecords(spec, skip_bad_records=data.skip_bad_records,
                            allow_outside_paths=data.allow_outside_paths)
    raise ValueError(f"data source {spec!r}: use 'world', 'world:KIND+KIND', a .jsonl file or "
                     "tfds:DATA_DIR:FORMAT[:SPLIT]")


def model_folder(config, workdir: str | None) -> str:
    """The HF folder the RM starts from: the pretrained checkpoint, or a scratch one we write."""
    if config.rm.pretrained:
        return config.rm.pretrained
    folder = os.path.join(workdir or tempfile.mkdtemp(), "base_model")
    if jax.process_index() == 0 or workdir is None:
        vlm.write_model_folder(config.model, config.data.image_size, folder)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("base_model_written")
    return folder


def make_task(config, workdir: str | None = None) -> Task:
    folder = model_folder(config, workdir)
    vlm_config = load_config(folder)
    template = TokenTemplate(rm_folder.load_tokenizer(folder))
    spec = row_spec_from_config(config.rm, vlm_config.vision.image_size, vlm_config.tokens_per_tile)
    builder = RowBuilder(template, spec)
    d = config.data
    train_source = open_source(d.train, d, seed=d.seed, size=d.train_pairs, noise=d.label_noise, train=True)
    loss_spec = LossSpec(paradigm=spec.paradigm, rationale_weight=config.rm.rationale_weight,
                         pointwise_ce_weight=config.rm.pointwise_ce_weight, yes_id=template.yes_id,
                         no_id=template.no_id, answer_col=spec.max_prompt_tokens - 1,
                         image_size=spec.image_size, max_tiles=_stream_tiles(train_source[0], spec))
    remat = checkpoint_policy(config.rm.remat_policy or None)
    make_model = lambda: RewardNet(vlm_config, regression_head=spec.paradigm == "regressive",
                                   rngs=nnx.Rngs(config.seed), remat_policy=remat)
    task = Task(make_model=make_model, loss_fn=make_loss_fn(loss_spec), source=train_source,
                transform=builder)
    eval_sets = {}
    for i, entry in enumerate(filter(None, d.eval_sets.split(","))):
        name, _, source = entry.partition("=")
        eval_sets[name] = open_source(source, d, seed=d.seed + 1000 + i, size=d.eval_pairs, noise=0.0)
    if config.rm.pretrained:
        task.initial_params = lambda shardings: rm_folder.pretrained_params(folder, vlm_config, shardings, spec.paradigm)
    task.evaluator_args = (builder, loss_spec, eval_sets)
    return task


def _stream_tiles(record, spec) -> int:
    """Clips are one tile per frame (as InternVL's video processor); still images may tile."""
    return 1 if record.images[0].ndim == 4 else spec.max_tiles


def main(argv):
    del argv
    config, workdir = cli.start()
    records.name_options(allow_outside_paths="--config.data.allow_outside_paths=true",
                         max_image_pixels="--config.data.max_image_pixels=N")
    with records.pixel_limit(config.data.max_image_pixels):
        run(config, workdir)


def run(config, workdir: str) -> None:
    task = make_task(config, workdir)
    builder, loss_spec, eval_sets = task.evaluator_args
    if eval_sets:
        from rdance.core import sharding
        graphdef = nnx.split(nnx.eval_shape(task.make_model), nnx.Param)[0]
        mesh = sharding.make_mesh(config.mesh.shape)
        task.evaluate = Evaluator(graphdef, builder, loss_spec, eval_sets, mesh, config.data.eval_batch_size)
    result = train(config, workdir, task)
    status.exit_if_preempted(result.preempted)
    export_dir = os.path.join(workdir, "export")
    rm_folder.export(result.state.params, model_folder(config, workdir), export_dir, config)
    logging.info("exported the reward model to %s", export_dir)


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
