"""The fine-tuning loop's eval on a held-out prompt file (config section ``eval``).

Every ``eval.every`` steps (and at 0 and after the last step) the parameters the export would
hold (EMA unless ``export.use_ema`` is off) draw ``eval.samples`` samples of each prompt of
``eval.prompts`` (text, GenEval JSONL, DrawBench CSV, PartiPrompts TSV: rdance.data.prompt_sets)
with the same noise every time: sample k of the prompts starting at s draws the noise
``rdance.run.evaluate --seed=eval.seed --batch_size=eval.batch_size`` draws
(rdance.reward.prompt_eval.sample_grid), so each eval equals that command on the exported
generator. They are scored by a pointwise or regressive RM folder (``eval.rm``, each of
``eval.criteria``: ``eval/rm/<criteria>``) and/or a CLIP folder (``eval.clip``:
``eval/clip_score``), the means over prompts and samples; the last eval's samples are written to
``WORKDIR/eval/grid.png`` (a row per prompt) and TensorBoard (``eval/samples``).
"""
from __future__ import annotations

import os

import numpy as np

from rdance.core.config_checks import ConfigValueError
from rdance.data.prompt_sets import PromptFileError, read_prompt_set
from rdance.reward.prompt_eval import sample_grid, score_samples
from rdance.train.generator_eval import Sampler
from rdance.train.loop import due
from rdance.train.metrics import MetricWriter
from rdance.train.monitors import image_grid

GRID_FILE = os.path.join("eval", "grid.png")


def criteria_list(config) -> list[str]:
    return [c.strip() for c in str(config.eval.criteria).split(",") if c.strip()]


def check(config) -> None:
    """Raise ConfigValueError, one line naming the key and the fix, for an eval section that cannot
    run; cheap (files and folders only), so it runs before anything is loaded or compiled."""
    e = config.get("eval")
    if e is None or not (e.prompts or e.rm or e.clip):
        return
    if not e.prompts:
        raise ConfigValueError("config key eval.prompts is empty but eval.rm or eval.clip is set: set "
                               "--config.eval.prompts=PATH (a .txt, .jsonl, .csv or .tsv prompt file)")
    try:
        read_prompt_set(e.prompts)
    except PromptFileError as err:
        raise ConfigValueError(f"config key eval.prompts={e.prompts}: {err}") from err
    if not (e.rm or e.clip):
        raise ConfigValueError(f"config key eval.prompts={e.prompts} has nothing to score it: set --config.eval.rm="
                               "FOLDER (a pointwise or regressive RM) and/or --config.eval.clip=FOLDER (a CLIPModel)")
    for key in ("rm", "clip"):
        if e[key] and not os.path.isdir(e[key]):
            raise ConfigValueError(f"config key eval.{key}={e[key]}: no such folder; give the "
                                   f"{'reward model export' if key == 'rm' else 'CLIPModel folder'} or leave it empty")
    if e.rm and not criteria_list(config):
        raise ConfigValueError("config key eval.criteria is empty: name one or more criteria, e.g. "
                               "--config.eval.criteria=alignment,aesthetics")


class PromptFileEval:
    """An evaluator of the loop (``due``, ``__call__(state, step) -> scalars``)."""

    def __init__(self, config, gen, sampler: Sampler, writer: MetricWriter, frozen, workdir: str):
        e = config.eval
        self.config, self.sampler, self.writer, self.frozen, self.workdir = config, sampler, writer, frozen, workdir
        self.prompts = [item.prompt for item in read_prompt_set(e.prompts)]
        self.tokens = gen.tokenize(self.prompts)
        self.criteria = criteria_list(config)
        self.rm = self.clip = None
        if e.rm:
            from rdance.reward.api import RewardModel
            self.rm = RewardModel.from_pretrained(e.rm)
            if self.rm.paradigm == "pairwise":
                raise ConfigValueError(f"config key eval.rm={e.rm} is a pairwise RM: the prompt-file eval scores "
                                       "samples alone; give a pointwise or regressive RM (GSB of two generators: "
                                       "python -m rdance.run.evaluate)")
        if e.clip:
            from rdance.reward.clip_score import CLIPScorer
            try:
                self.clip = CLIPScorer.from_pretrained(e.clip)
            except (FileNotFoundError, ValueError) as err:
                raise ConfigValueError(f"config key eval.clip={e.clip}: {err}") from err
        self.which = "ema" if config.export.use_ema else "params"

    def due(self, step: int, last_step: int) -> bool:
        return due(step, self.config.eval.every, last_step)

    def samples(self, trainable) -> np.ndarray:
        """uint8 [P, K, *image_shape] of ``trainable``, noise as ``rdance.run.evaluate`` draws it."""
        e = self.config.eval

        def draw(start, stop, seed):
            tokens = {name: v[start:stop] for name, v in self.tokens.items()}
            return self.sampler(trainable, self.frozen, tokens, np.arange(stop - start), seed=seed)
        return sample_grid(len(self.prompts), e.samples, e.batch_size, e.seed, draw)

    def __call__(self, state, step: int) -> dict[str, float]:
        images = self.samples(getattr(state, self.which))
        scores = score_samples(images, self.prompts, self.rm, self.criteria, self.clip)
        grid = image_grid(images.reshape(-1, *images.shape[2:]), images.shape[1])   # a prompt's samples per row
        self.writer.write_image(step, "eval/samples", grid)
        if self._main_process():
            from PIL import Image
            path = os.path.join(self.workdir, GRID_FILE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(grid).save(path)
        return {f"eval/{name}": float(values.mean()) for name, values in scores.items()}

    def _main_process(self) -> bool:
        import jax
        return jax.process_index() == 0 and "://" not in self.workdir
