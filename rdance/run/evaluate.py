r"""Evaluate generators on a prompt set: samples in GenEval's folder layout, reward-model scores,
and a GSB head-to-head between two generators judged by a pairwise reward model.

    python -m rdance.run.evaluate --generators=base=/ckpt/FLUX.1-dev,tuned=/runs/refl/pipeline \
        --prompt_file=drawbench.csv --out_dir=/tmp/eval --samples_per_prompt=4 --rm=/tmp/rm/export

``--generators`` are LABEL=FOLDER pairs (FluxPipeline folders or world generator folders); every
generator samples every prompt with the same noise (sample k of prompt p: seed ``--seed + k``,
row p). ``--prompt_file``: .txt (a prompt per line), .jsonl (a ``prompt`` field per object;
GenEval's ``evaluation_metadata.jsonl``), .csv / .tsv with a Prompt(s) column (DrawBench,
PartiPrompts); a Category column gives per-category means.

Writes, under ``--out_dir``:
  ``LABEL/NNNNN/metadata.jsonl`` and ``LABEL/NNNNN/samples/KKKK.png``: GenEval's layout, so its
      official scorer runs on LABEL/ as it is;
  ``LABEL/grid.png``: the first ``--grid_prompts`` prompts, a row each;
  ``scores.jsonl``: per generator and prompt, the reward of each sample (a row per criteria) and,
      with ``--clip``, the CLIP score of each sample (a row with ``clip_score``);
  ``gsb.jsonl``: per prompt and sample, both orders' P(yes) and the verdict;
  ``summary.md``: the table printed at the end.

Rewards: a pointwise or regressive ``--rm`` scores each sample alone for each ``--criteria``. A
pairwise ``--rm`` judges the first two generators head to head, in both orders (P(yes): "is
image 2 better than image 1?"): p = (P(B over A) + 1 - P(A over B)) / 2; B is Good where p >
0.5 + ``--gsb_margin``, Bad where p < 0.5 - margin, Same otherwise; GSB = (G - B) / (G + S + B).

``--clip`` is a transformers CLIPModel folder (PickScore_v1, or a world CLIP from
rdance.world.clip_model): each sample's PickScore-style score, logit_scale.exp() * cosine(image,
prompt), is the table's ``clip_score`` column (its mean) beside the RM's.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from rdance.core import console
from rdance.reward.gsb import gsb_verdicts
from rdance.reward.prompt_eval import sample_grid, score_samples

FLAGS = flags.FLAGS
flags.DEFINE_list("generators", None, "LABEL=FOLDER pairs (FluxPipeline or world generator folders).", required=True)
flags.DEFINE_string("prompt_file", None, "Prompts: .txt, .jsonl (GenEval metadata), .csv/.tsv (DrawBench, "
                    "PartiPrompts).", required=True)
flags.DEFINE_string("out_dir", None, "Where samples, scores and the summary go.", required=True)
flags.DEFINE_integer("samples_per_prompt", 4, "Samples of each prompt per generator (GenEval uses 4).")
flags.DEFINE_integer("seed", 0, "Sample k of every prompt uses seed + k.")
flags.DEFINE_integer("steps", 28, "Euler steps.")
flags.DEFINE_integer("batch_size", 8, "Prompts per compiled sampling call.")
flags.DEFINE_integer("height", 1024, "FLUX image height (world generators use their own size).")
flags.DEFINE_integer("width", 1024, "FLUX image width.")
flags.DEFINE_float("guidance", 3.5, "FLUX.1-dev distilled guidance.")
flags.DEFINE_integer("max_sequence_length", 512, "T5 tokens per prompt (FLUX).")
flags.DEFINE_string("rm", None, "Reward model folder: pointwise/regressive scores each sample, pairwise "
                    "judges the first two generators head to head.")
flags.DEFINE_list("criteria", ["alignment"], "Criteria a pointwise RM is asked (preset names or text).")
flags.DEFINE_float("gsb_margin", 0.1, "How far from 0.5 the order-averaged P(yes) must be for Good or Bad.")
flags.DEFINE_integer("grid_prompts", 8, "Prompts in each generator's grid.png.")
flags.DEFINE_string("clip", None, "A transformers CLIPModel folder (PickScore, or a world CLIP): adds each "
                    "sample's CLIP score, logit_scale.exp() * cosine(image, prompt), as clip_score.")


def parse_generators(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        label, sep, folder = pair.partition("=")
        if not sep or not label or not folder:
            raise app.UsageError(f"--generators entry {pair!r}: write LABEL=FOLDER")
        if label in out:
            raise app.UsageError(f"--generators: label {label!r} is given twice")
        if not Path(folder).is_dir():
            raise app.UsageError(f"--generators {label}={folder}: no such folder")
        out[label] = folder
    return out


def sample_all(opened, prompts: list[str]) -> np.ndarray:
    """uint8 [P, K, H, W, 3]: sample k of prompt p with the noise rdance.reward.prompt_eval.sample_grid
    gives it (the fine-tuning loop's prompt-file eval draws the same)."""
    return sample_grid(len(prompts), FLAGS.samples_per_prompt, FLAGS.batch_size, FLAGS.seed,
                       lambda start, stop, seed: opened.sample(prompts[start:stop], seed=seed).images)


def write_geneval(folder: Path, items, images: np.ndarray) -> None:
    from PIL import Image
    for p, item in enumerate(items):
        prompt_dir = folder / f"{p:05d}"
        (prompt_dir / "samples").mkdir(parents=True, exist_ok=True)
        metadata = item.metadata if "prompt" in item.metadata else dict(prompt=item.prompt)
        (prompt_dir / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
        for k, image in enumerate(images[p]):
            Image.fromarray(image).save(prompt_dir / "samples" / f"{k:04d}.png")


def main(argv):
    del argv
    from rdance.data.prompt_sets import PromptFileError, read_prompt_set
    from rdance.jobs.report import grid_image
    from rdance.run.folders import open_generator_folder

    generators = parse_generators(FLAGS.generators)
    if FLAGS.samples_per_prompt < 1 or FLAGS.steps < 1 or FLAGS.batch_size < 1:
        raise app.UsageError("--samples_per_prompt, --steps and --batch_size must be at least 1")
    if not 0.0 <= FLAGS.gsb_margin < 0.5:
        raise app.UsageError(f"--gsb_margin={FLAGS.gsb_margin} must be in [0, 0.5)")
    try:
        items = read_prompt_set(FLAGS.prompt_file)
    except PromptFileError as e:
        raise app.UsageError(str(e)) from e
    rm = None
    if FLAGS.rm:
        from rdance.reward.api import RewardModel
        rm = RewardModel.from_pretrained(FLAGS.rm)
        if rm.paradigm == "pairwise" and len(generators) < 2:
            raise app.UsageError("a pairwise --rm judges two generators head to head: give two --generators "
                                 "(or a pointwise or regressive RM to score one)")
    clip = None
    if FLAGS.clip:
        from rdance.reward.clip_score import CLIPScorer
        try:
            clip = CLIPScorer.from_pretrained(FLAGS.clip)
        except (FileNotFoundError, ValueError) as e:   # wrong folder, missing files, bad config
            raise app.UsageError(f"--clip={FLAGS.clip}: {e}") from e
    prompts = [item.prompt for item in items]
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    pointwise = rm is not None and rm.paradigm != "pairwise"
    columns = (["generator", "seconds"] + ([f"RM {c}" for c in FLAGS.criteria] if pointwise else [])
               + (["clip_score"] if clip is not None else []))
    samples, summary = {}, ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    repeated = [p for p in prompts for _ in range(FLAGS.samples_per_prompt)]   # one per sample, prompt-major
    with open(out / "scores.jsonl", "w") as scores_log:
        for label, folder in generators.items():
            started = time.time()
            opened = open_generator_folder(folder, steps=FLAGS.steps, height=FLAGS.height, width=FLAGS.width,
                                           guidance=FLAGS.guidance, max_sequence_length=FLAGS.max_sequence_length)
            images = samples[label] = sample_all(opened, prompts)
            write_geneval(out / label, items, images)
            grid_image(images[:FLAGS.grid_prompts], labels=prompts[:FLAGS.grid_prompts]).save(out / label / "grid.png")
            row = [f"{time.time() - started:.1f}"]
            scores = score_samples(images, prompts, rm if pointwise else None, FLAGS.criteria, clip)
            for name, values in scores.items():
                row.append(f"{values.mean():.4f}")
                for p, item in enumerate(items):
                    row_scores = (dict(criteria=name[len("rm/"):], rewards=values[p].tolist())
                                  if name.startswith("rm/") else {name: values[p].tolist()})
                    scores_log.write(json.dumps(dict(generator=label, prompt=item.prompt, category=item.category,
                                                     **row_scores)) + "\n")
            summary.append(f"| {label} | " + " | ".join(row) + " |")
            logging.info("%s: %d prompts x %d samples in %s", label, len(prompts), FLAGS.samples_per_prompt, row[0])

    if rm is not None and rm.paradigm == "pairwise":
        (a, images_a), (b, images_b) = list(samples.items())[:2]
        flat_a, flat_b = images_a.reshape(-1, *images_a.shape[2:]), images_b.reshape(-1, *images_b.shape[2:])
        b_over_a = rm.score_pairwise(flat_a, flat_b, repeated)
        a_over_b = rm.score_pairwise(flat_b, flat_a, repeated)
        p, counts = gsb_verdicts(b_over_a, a_over_b, FLAGS.gsb_margin)
        with open(out / "gsb.jsonl", "w") as log:
            for i, prompt in enumerate(repeated):
                margin = FLAGS.gsb_margin
                verdict = "good" if p[i] > 0.5 + margin else "bad" if p[i] < 0.5 - margin else "same"
                log.write(json.dumps(dict(prompt=prompt, sample=i % FLAGS.samples_per_prompt,
                                          b_over_a=float(b_over_a[i]), a_over_b=float(a_over_b[i]),
                                          p_b_wins=float(p[i]), verdict=verdict)) + "\n")
        summary += ["", f"GSB of {b} against {a} (pairwise RM {FLAGS.rm}, margin {FLAGS.gsb_margin}, "
                        f"{len(p)} comparisons): Good {counts['good']}, Same {counts['same']}, Bad {counts['bad']}, "
                        f"GSB {counts['gsb']:+.3f}"]
    text = "\n".join(summary) + "\n"
    (out / "summary.md").write_text(text)
    sys.stdout.write(text)


def run():
    console.run(main)


if __name__ == "__main__":
    run()
