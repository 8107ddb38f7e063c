"""Reward-model training from a config, as reward-level pieces: the RM folder it starts from,
the model, rows, loss, training records and held-out sets. The shared loop's Task is assembled
from these by the entrypoint (rdance.run.train_reward): rdance.train sits above rdance.reward.

Data sources are opened by spec through rdance.data.registry; the synthetic world's forms are
there once ``rdance.world`` is imported.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Callable, Iterable, Sequence

import jax
from flax import nnx

from rdance.data.registry import open_source
from rdance.models import attention as attnlib
from rdance.models.internvl.config import InternVLConfig, load_config
from rdance.reward import folder as rm_folder
from rdance.reward.model import RewardNet
from rdance.reward.rows import RowBuilder
from rdance.reward.task import Evaluator, LossSpec, make_loss_fn, row_spec_from_config
from rdance.reward.templates import TokenTemplate


@dataclasses.dataclass
class RewardTraining:
    folder: str                         # the HF folder the RM starts from (the export copies its tokenizer)
    vlm_config: InternVLConfig
    builder: RowBuilder                 # record -> rows: the loop's transform
    loss_spec: LossSpec
    make_model: Callable[[], RewardNet]
    loss_fn: Callable                   # make_loss_fn(loss_spec)
    source: Sequence                    # training records
    eval_sets: dict[str, Sequence]      # held-out records by name (data.eval_sets)
    initial_params: Callable[[Any], Any] | None  # pretrained weights on given shardings; None: random

    @classmethod
    def from_config(cls, config, workdir: str | None = None,
                    corpus: Callable[[], Iterable[str]] | None = None) -> "RewardTraining":
        """``corpus()`` gives the texts a from-scratch model's word tokenizer is built from
        (without ``rm.pretrained``; default the reward templates' own words)."""
        folder = model_folder(config, workdir, corpus)
        vlm_config = load_config(folder)
        template = TokenTemplate(rm_folder.load_tokenizer(folder))
        spec = row_spec_from_config(config.rm, vlm_config.vision.image_size, vlm_config.tokens_per_tile)
        d = config.data
        source = open_source(d.train, d, seed=d.seed, size=d.train_pairs, noise=d.label_noise, train=True)
        loss_spec = LossSpec(paradigm=spec.paradigm, rationale_weight=config.rm.rationale_weight,
                             pointwise_ce_weight=config.rm.pointwise_ce_weight, yes_id=template.yes_id,
                             no_id=template.no_id, answer_col=spec.max_prompt_tokens - 1,
                             image_size=spec.image_size, max_tiles=_stream_tiles(source[0], spec),
                             row_weights=row_weights(config.rm))
        position_std = 0.0 if config.rm.pretrained else vision_position_init_std(config.model)

        def make_model():
            net = RewardNet(vlm_config, regression_head=spec.paradigm == "regressive", rngs=nnx.Rngs(config.seed),
                            remat=config.rm.remat, attention=attnlib.from_config(config.rm))
            if position_std:
                init_vision_positions(net, position_std, config.seed)
            return net
        eval_sets = {}
        for i, entry in enumerate(filter(None, d.eval_sets.split(","))):
            name, _, eval_spec = entry.partition("=")
            eval_sets[name] = open_source(eval_spec, d, seed=d.seed + 1000 + i, size=d.eval_pairs, noise=0.0)
        initial_params = None
        if config.rm.pretrained:
            initial_params = lambda shardings: rm_folder.pretrained_params(folder, vlm_config, shardings,
                                                                           spec.paradigm)
        return cls(folder, vlm_config, RowBuilder(template, spec), loss_spec, make_model, make_loss_fn(loss_spec),
                   source, eval_sets, initial_params)

    def evaluator(self, mesh, batch_records: int) -> Evaluator:
        """Metrics on the held-out sets, for the loop's ``evaluate``."""
        graphdef = nnx.split(nnx.eval_shape(self.make_model), nnx.Param)[0]
        return Evaluator(graphdef, self.builder, self.loss_spec, self.eval_sets, mesh, batch_records)


def model_folder(config, workdir: str | None, corpus: Callable[[], Iterable[str]] | None = None) -> str:
    """The HF folder the RM starts from: the pretrained checkpoint, or an untrained one written
    to ``WORKDIR/base_model`` (a temporary folder without a workdir)."""
    if config.rm.pretrained:
        return config.rm.pretrained
    folder = os.path.join(workdir or tempfile.mkdtemp(), "base_model")
    if jax.process_index() == 0 or workdir is None:
        rm_folder.write_model_folder(config.model, config.data.image_size, folder, corpus() if corpus else None)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("base_model_written")
    return folder


def vision_position_init_std(model) -> float:
    """model.vision_position_init_std: the spread of a from-scratch vision tower's absolute
    position embeddings. 0 (the default) starts them at zero, as transformers' InternVL does;
    then every patch enters the tower alike wherever it lies, and where it lies is learnt slowly."""
    value = model.get("vision_position_init_std", 0.0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"model.vision_position_init_std={value!r}; use a spread >= 0 (0: zeros, as transformers)")
    return float(value)


def init_vision_positions(net: RewardNet, std: float, seed: int) -> None:
    """Draw the vision tower's position embeddings from normal(std), one fixed draw per seed."""
    table = net.vlm.vision.position_embeddings
    if table is None:
        raise ValueError("model.vision_position_init_std is set, but this vision tower has no absolute position "
                         "embeddings (use_absolute_position_embeddings is false)")
    key = jax.random.fold_in(jax.random.key(seed), 0x706f73)
    table[...] = std * jax.random.normal(key, table[...].shape, table[...].dtype)


def row_weights(rm) -> bool:
    """rm.row_weights: whether the loss weights each record (its stored weight); off by default."""
    value = rm.get("row_weights", False)
    if not isinstance(value, bool):
        raise ValueError(f"rm.row_weights={value!r}; use true (each record's loss times its weight) or "
                         "false (every record counts alike)")
    return value


def _stream_tiles(record, spec) -> int:
    """Clips are one tile per frame (as InternVL's video processor); still images may tile."""
    return 1 if record.images[0].ndim == 4 else spec.max_tiles
