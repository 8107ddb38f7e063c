"""Judge world generators side by side: the same held-out prompts and the same noise for each, scored
by the synthetic world's programmatic judge, with sample grids.

    python -m rdance.run.judge_generators --config=experiments/finetune_smoke.py --workdir=/tmp/judged \\
        --generators=before=/tmp/gen_smoke/export,after=/tmp/ft_refl/export --samples_per_prompt=4

The held-out prompts, the sampler's steps and the noise seed come from the fine-tuning config
(``data.prompt_seed``, ``data.train_prompts``, ``data.eval_prompts``, ``sampler.num_steps``,
``monitor.eval_seed``), so with the fine-tuning run's own overrides sample 0 of every prompt is
what that run's ``eval/judge`` scored. Sample s of prompt p has noise id ``s * P + p``.

Writes ``WORKDIR/scores.json`` (mean judge score of every generator, overall and per prompt
kind, the pass rate of each kind of check (rdance.world.judge.check_rates: is an asked
object there in its colour at all, and in its shape?), and every sample's score),
``WORKDIR/grid_<label>.png`` (the first ``--grid_prompts`` prompts, one row each,
``--grid_samples`` samples per row) and ``WORKDIR/comparison.png`` (a faithful render, then each
generator, for the same prompts with sample 0, each labelled with its score).
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from absl import flags, logging

from rdance.run import cli

from rdance.core import console, sharding
from rdance.world.render import render
from rdance.jobs.report import comparison_image, grid_image
from rdance.world.captions import world_prompt_split
from rdance.world.evaluate import judge_scores, judge_with_checks
from rdance.world.generator import open_folder_sampler

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)

GENERATORS = flags.DEFINE_string("generators", None, "LABEL=FOLDER,LABEL=FOLDER: world generator folders")
SAMPLES = flags.DEFINE_integer("samples_per_prompt", 4, "samples per held-out prompt and generator")
GRID_PROMPTS = flags.DEFINE_integer("grid_prompts", 16, "prompts shown in the sample grids")
GRID_SAMPLES = flags.DEFINE_integer("grid_samples", 4, "samples per prompt shown in the sample grids")
SCALE = flags.DEFINE_integer("scale", 3, "pixel upscaling of the grids")
GUIDANCE = flags.DEFINE_float("guidance_scale", None, "classifier-free guidance for every generator "
                              "(default: each folder's own, from its generator.json)")


def parse_generators(spec: str | None) -> dict[str, str]:
    if not spec:
        raise ValueError("--generators is required: LABEL=FOLDER,LABEL=FOLDER")
    out = {}
    for item in spec.split(","):
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise ValueError(f"--generators item {item!r}: write LABEL=FOLDER")
        if label in out:
            raise ValueError(f"--generators names {label!r} twice")
        if not os.path.isfile(os.path.join(folder, "generator.json")):
            raise ValueError(f"--generators {label}={folder}: not a world generator folder (no generator.json); "
                             "python -m rdance.run.pretrain_generator and rdance.run.finetune write one to WORKDIR/export")
        out[label] = folder
    return out


def summarise(scores: np.ndarray, kinds: list[str]) -> dict:
    """scores [S, P] -> mean overall, per kind, of sample 0 only, and the scores themselves."""
    kinds_arr = np.asarray(kinds)
    return {"judge": float(scores.mean()), "judge_sample0": float(scores[0].mean()),
            "by_kind": {k: float(scores[:, kinds_arr == k].mean()) for k in sorted(set(kinds))},
            "scores": np.round(scores, 6).tolist()}


def main(argv):
    del argv
    config, workdir = cli.start()
    try:
        folders = parse_generators(GENERATORS.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    d, s = config.data, SAMPLES.value
    _, scenes = world_prompt_split(d.prompt_seed, d.train_prompts, d.eval_prompts)
    prompts, kinds = [x.prompt for x in scenes], [x.kind for x in scenes]
    count = len(scenes)
    mesh = sharding.make_mesh(config.mesh.shape)
    ids = np.arange(s * count)                     # sample s of prompt p: id s * P + p
    out = {"prompts": prompts, "kinds": kinds, "samples_per_prompt": s, "seed": config.monitor.eval_seed,
           "num_steps": config.sampler.num_steps, "generators": {}}
    images = {}
    for label, folder in folders.items():
        try:
            gen, sampler, params = open_folder_sampler(folder, mesh, config.mesh.rules, config.sampler.num_steps,
                                                  config.monitor.eval_chunk, config.monitor.eval_seed,
                                                  GUIDANCE.value)
        except ValueError as e:
            sys.exit(f"error: --generators {label}={folder}: {e}")
        tokens = gen.tokenize(prompts * s)
        samples = sampler(params, gen.frozen, tokens, ids).reshape(s, count, *gen.image_shape)
        scores, checks = judge_with_checks(samples.reshape(-1, *gen.image_shape), scenes * s)
        scores = scores.reshape(s, count)
        out["generators"][label] = dict(summarise(scores, kinds), checks=checks, folder=folder,
                                        guidance_scale=gen.cfg.guidance_scale)
        images[label] = (samples, scores)
        logging.info("judge %s: %.4f over %d prompts x %d samples (%s); checks passed: %s", label, scores.mean(),
                     count, s, "  ".join(f"{k} {v:.3f}" for k, v in out["generators"][label]["by_kind"].items()),
                     "  ".join(f"{k} {v:.3f}" for k, v in checks.items()))
    size = next(iter(images.values()))[0].shape[2]
    targets = np.stack([render(x, size) for x in scenes])
    target_scores = judge_scores(targets, scenes)
    out["target"] = {"judge": float(target_scores.mean())}
    g, gs = min(GRID_PROMPTS.value, count), min(GRID_SAMPLES.value, s)
    out.update(grid_prompts=g, grid_samples=gs)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        for label, (samples, _) in images.items():
            rows = samples[:gs, :g].transpose(1, 0, 2, 3, 4)          # [prompt, sample, H, W, 3]
            grid_image(rows, SCALE.value, labels=prompts[:g]).save(os.path.join(workdir, f"grid_{label}.png"))
        rows = [("render", targets[:g], target_scores[:g])]
        rows += [(label, samples[0, :g], scores[0, :g]) for label, (samples, scores) in images.items()]
        comparison_image(rows, SCALE.value).save(os.path.join(workdir, "comparison.png"))
        np.savez_compressed(os.path.join(workdir, "samples.npz"),
                            **{label: samples for label, (samples, _) in images.items()}, render=targets)
        tmp = os.path.join(workdir, "scores.json.tmp")
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, os.path.join(workdir, "scores.json"))
    logging.info("wrote %s", os.path.join(workdir, "scores.json"))


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
