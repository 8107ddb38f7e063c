r"""Text to image with a FLUX pipeline folder (or a world generator folder), or text/image to video
with a Wan 2.1 pipeline folder (``--task=t2v|i2v``): PNGs (and MP4s) plus a JSONL of prompts,
seeds and settings.

    python -m rdance.run.generate --pipeline=/ckpt/FLUX.1-dev --out_dir=/tmp/out \
        --prompts="a red cube" --prompts="two cats" --height=1024 --width=1024 --batch_size=2

Image i uses seed ``--seed + i``, so any single image can be regenerated from its JSONL line.

Video (rdance.diffusion.wan_pipeline; frames as PNGs, an MP4 with ``pip install rdance[video]``):

    python -m rdance.run.generate --task=t2v --pipeline=/ckpt/Wan2.1-T2V-1.3B-Diffusers --out_dir=/tmp/v \
        --prompts="a cat surfing" --prompts="a dog skiing" --num_frames=33 --height=480 --width=832 \
        --steps=50 --guidance=5 --batch_size=2
    python -m rdance.run.generate --task=i2v --pipeline=/ckpt/Wan2.1-I2V-14B-480P-Diffusers --out_dir=/tmp/v \
        --image=first.png --prompts="the cat jumps" --num_frames=33 --height=480 --width=832

Inference-time search with a reward model as verifier (rdance.diffusion.search):

    python -m rdance.run.generate --pipeline=... --out_dir=... --prompt_file=prompts.txt \
        --search=paths --verifier=/tmp/rm/export --search_n=4 --search_m=2

``--search=best_of_n`` samples ``--search_n`` candidates per prompt and keeps the verifier's best;
``paths`` is search over paths (Ma et al. 2025). A pairwise RM scores each candidate against the
prompt's running best, a pointwise or regressive RM scores it alone. Each JSONL line then carries
the verifier's score and the search's compute (generator evaluations per prompt, as a multiple
of plain sampling); the totals are printed at the end. Under search, a batch's noise is keyed
by (``--seed`` + index of its first prompt, candidate), so a line's seed and settings regenerate it.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from rdance.core import console
from rdance.run.folders import is_world_folder, open_generator_folder

FLAGS = flags.FLAGS
TASK_DEFAULTS = {"t2i": dict(height=1024, width=1024, steps=28, guidance=3.5),   # FLUX.1-dev's
                 "t2v": dict(height=480, width=832, steps=50, guidance=5.0),     # Wan 2.1's
                 "i2v": dict(height=480, width=832, steps=50, guidance=5.0)}
flags.DEFINE_enum("task", "t2i", ["t2i", "t2v", "i2v"], "t2i: text to image (FLUX or world folder); t2v / i2v: "
                  "text / image to video (a Wan 2.1 WanPipeline / WanImageToVideoPipeline folder).")
flags.DEFINE_string("pipeline", None, "FluxPipeline, world generator or Wan pipeline folder (model_index.json "
                    "layout).", required=True)
flags.DEFINE_string("out_dir", None, "Where PNGs (videos: frame folders and MP4s) and samples.jsonl are written.",
                    required=True)
flags.DEFINE_string("image", None, "--task=i2v: the first frame (an image file), resized to --height x --width.")
flags.DEFINE_integer("num_frames", 81, "Video frames (4k+1: the Wan VAE's time stride is 4).")
flags.DEFINE_integer("fps", 16, "Frames per second of the MP4s (Wan 2.1 is trained at 16).")
flags.DEFINE_multi_string("prompts", [], "Prompt; repeat the flag for several.")
flags.DEFINE_string("prompt_file", None, "Text file with one prompt per line (added after --prompts).")
flags.DEFINE_integer("height", None, "Height in pixels (multiple of 16); default 1024 (t2i), 480 (t2v, i2v).")
flags.DEFINE_integer("width", None, "Width in pixels (multiple of 16); default 1024 (t2i), 832 (t2v, i2v).")
flags.DEFINE_integer("steps", None, "Sampling steps; default 28 (t2i), 50 (t2v, i2v).")
flags.DEFINE_float("guidance", None, "t2i: distilled guidance scale (FLUX.1-dev; ignored by schnell), default "
                   "3.5; t2v/i2v: classifier-free guidance scale (two passes when > 1), default 5.")
flags.DEFINE_float("true_cfg", 1.0, "t2i: true classifier-free guidance scale; > 1 needs --negative_prompt.")
flags.DEFINE_string("negative_prompt", None, "Negative prompt for true CFG (t2v/i2v: default '').")
flags.DEFINE_integer("batch_size", 1, "Images (videos) per compiled sampling call; image (video) i uses seed + i "
                     "whatever the batching.")
flags.DEFINE_integer("seed", 0, "Seed of the first image; image i uses seed + i.")
flags.DEFINE_integer("max_sequence_length", 512, "T5 tokens per prompt.")
flags.DEFINE_enum("on_overflow", "warn", ["warn", "error"], "Prompt longer than the T5 limit: truncate "
                  "with a warning, or stop.")
flags.DEFINE_string("dtype", None, "Compute dtype (e.g. bfloat16); parameters stay as loaded.")
flags.DEFINE_enum("search", "none", ["none", "best_of_n", "paths"], "Inference-time search with --verifier "
                  "(rdance.diffusion.search).")
flags.DEFINE_string("verifier", None, "Reward model folder (train_reward's export or an InternVL -hf folder) "
                    "that scores the search's candidates.")
flags.DEFINE_string("verifier_criteria", None, "Criteria text the verifier is asked about (default: its own).")
flags.DEFINE_integer("search_n", 4, "best_of_n: candidates per prompt; paths: paths kept per prompt.")
flags.DEFINE_integer("search_m", 2, "paths: candidates each path branches into per round.")
flags.DEFINE_integer("search_start", 0, "paths: Euler step of the first branching (0: half of --steps).")
flags.DEFINE_integer("search_forward", 1, "paths: steps each round re-noises up the schedule.")
flags.DEFINE_integer("search_backward", 2, "paths: steps each round then denoises (> --search_forward).")


def read_prompts() -> list[str]:
    prompts = list(FLAGS.prompts)
    if FLAGS.prompt_file:
        path = Path(FLAGS.prompt_file)
        if not path.is_file():
            raise app.UsageError(f"--prompt_file {path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise app.UsageError("no prompts: pass --prompts (repeatable) or --prompt_file")
    return prompts


def progress(done: int, total: int, started: float):
    """A one-line progress bar on stderr (images done, rate)."""
    width = 30
    filled = width * done // total
    rate = done / max(time.time() - started, 1e-9)
    unit, rate_unit = ("images", "img/s") if FLAGS.task == "t2i" else ("videos", "videos/s")
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}, {rate:.2f} {rate_unit}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def search_config():
    from rdance.diffusion.search import SearchConfig
    return SearchConfig(method=FLAGS.search, n=FLAGS.search_n, m=FLAGS.search_m, start_step=FLAGS.search_start,
                        forward_steps=FLAGS.search_forward, backward_steps=FLAGS.search_backward)


def verifier_of(rm, prompts: list[str]):
    """The verifier of one batch's prompts from the reward model ``rm`` (None: no search)."""
    from rdance.diffusion.search import PairwiseAgainstBest, pointwise_verifier
    if rm is None:
        return None
    if rm.paradigm == "pairwise":
        score = rm.score_pairwise
        if FLAGS.verifier_criteria:
            score = lambda refs, images, ps: rm.score_pairwise(refs, images, ps, criteria=FLAGS.verifier_criteria)
        return PairwiseAgainstBest(score, prompts)
    return pointwise_verifier(rm.score_pointwise, prompts, criteria=FLAGS.verifier_criteria)


def check_flags(pipeline_is_world: bool):
    if FLAGS.batch_size < 1:
        raise app.UsageError("--batch_size must be at least 1")
    if FLAGS.true_cfg > 1 and FLAGS.negative_prompt is None:
        raise app.UsageError("--true_cfg > 1 needs --negative_prompt (use '' for an empty one)")
    searching = FLAGS.search != "none" or pipeline_is_world
    if FLAGS.search != "none" and not FLAGS.verifier:
        raise app.UsageError(f"--search={FLAGS.search} needs --verifier (a reward model folder)")
    if FLAGS.verifier and FLAGS.search == "none":
        raise app.UsageError("--verifier is used only by a search: add --search=best_of_n or --search=paths")
    if searching and FLAGS.true_cfg > 1:
        raise app.UsageError("--true_cfg is not supported with --search or a world generator folder")
    try:
        search_config().check(FLAGS.steps)
    except ValueError as e:
        raise app.UsageError(f"{e} (flags --search_n, --search_m, --search_start, --search_forward, "
                             "--search_backward, --steps)") from e


def resolve_task_defaults():
    """Flags left unset take the task's defaults (FLUX's for t2i, Wan 2.1's for video)."""
    for name, value in TASK_DEFAULTS[FLAGS.task].items():
        if getattr(FLAGS, name) is None:
            setattr(FLAGS, name, value)


def main_video(prompts: list[str]):
    """--task=t2v|i2v with a Wan pipeline folder (rdance.run.video)."""
    from rdance.diffusion import wan_pipeline
    from rdance.run.video import generate_videos
    i2v = FLAGS.task == "i2v"
    if i2v and not FLAGS.image:
        raise app.UsageError("--task=i2v needs --image=PATH (the video's first frame)")
    if FLAGS.image and not i2v:
        raise app.UsageError("--image is the first frame of --task=i2v; drop it or pass --task=i2v")
    if FLAGS.image and not Path(FLAGS.image).is_file():
        raise app.UsageError(f"--image {FLAGS.image} does not exist")
    if FLAGS.search != "none" or FLAGS.verifier or FLAGS.true_cfg != 1.0:
        raise app.UsageError("--search, --verifier and --true_cfg are for --task=t2i; video uses "
                             "--guidance (with --negative_prompt) and one video per prompt")
    if FLAGS.batch_size < 1:
        raise app.UsageError("--batch_size must be at least 1")
    try:
        wan_pipeline.preflight(FLAGS.pipeline, image_given=i2v, num_frames=FLAGS.num_frames, height=FLAGS.height,
                               width=FLAGS.width)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(f"{e} (flags --task, --pipeline, --num_frames, --height, --width)") from e
    out_dir = Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = wan_pipeline.WanSampler.from_pretrained(FLAGS.pipeline, dtype=FLAGS.dtype or None)
    settings = dict(num_frames=FLAGS.num_frames, height=FLAGS.height, width=FLAGS.width, num_steps=FLAGS.steps,
                    guidance_scale=FLAGS.guidance, max_sequence_length=FLAGS.max_sequence_length)
    n = generate_videos(pipe, prompts, out_dir, image=FLAGS.image, image_path=FLAGS.image, settings=settings,
                        seed=FLAGS.seed, negative_prompt=FLAGS.negative_prompt, fps=FLAGS.fps,
                        pipeline=str(FLAGS.pipeline), progress=progress, batch_size=FLAGS.batch_size)
    logging.info("wrote %d videos to %s", n, out_dir)


def main(argv):
    del argv
    prompts = read_prompts()
    resolve_task_defaults()
    if FLAGS.task != "t2i":
        return main_video(prompts)
    world = is_world_folder(FLAGS.pipeline)
    check_flags(world)
    out_dir = Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if FLAGS.search != "none" or world:
        return main_search(prompts, out_dir)

    from PIL import Image

    from rdance.diffusion.flux_generator import FluxGenerator
    pipe = FluxGenerator.from_pretrained(FLAGS.pipeline, height=FLAGS.height, width=FLAGS.width,
                                         guidance_scale=FLAGS.guidance, max_sequence_length=FLAGS.max_sequence_length,
                                         dtype=FLAGS.dtype or None, vae_remat="none")
    settings = dict(height=FLAGS.height, width=FLAGS.width, num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance,
                    true_cfg_scale=FLAGS.true_cfg, max_sequence_length=FLAGS.max_sequence_length,
                    on_overflow=FLAGS.on_overflow)
    negative = None if FLAGS.negative_prompt is None else [FLAGS.negative_prompt]
    started = time.time()
    with open(out_dir / "samples.jsonl", "a") as log:
        for start in range(0, len(prompts), FLAGS.batch_size):
            batch = prompts[start:start + FLAGS.batch_size]
            seeds = [FLAGS.seed + start + i for i in range(len(batch))]
            images = pipe(batch, seeds=seeds, negative_prompts=negative, **settings)
            for i, (prompt, seed, image) in enumerate(zip(batch, seeds, images)):
                name = f"{start + i:05d}.png"
                Image.fromarray(image).save(out_dir / name)
                log.write(json.dumps(dict(file=name, prompt=prompt, seed=seed, negative_prompt=FLAGS.negative_prompt,
                                          pipeline=str(FLAGS.pipeline), **settings)) + "\n")
            progress(start + len(batch), len(prompts), started)
    logging.info("wrote %d images to %s", len(prompts), out_dir)


def main_search(prompts: list[str], out_dir: Path):
    """Sampling through rdance.diffusion.search (plain sampling when --search=none): each batch
    is one search, its noise keyed by (--seed + the batch's first index, candidate row)."""
    from PIL import Image
    rm = None
    if FLAGS.verifier:
        from rdance.reward.api import RewardModel
        rm = RewardModel.from_pretrained(FLAGS.verifier)
    opened = open_generator_folder(FLAGS.pipeline, steps=FLAGS.steps, search=search_config(), height=FLAGS.height,
                                   width=FLAGS.width, guidance=FLAGS.guidance,
                                   max_sequence_length=FLAGS.max_sequence_length, dtype=FLAGS.dtype or None)
    searcher = opened.searcher
    search = dict(search=FLAGS.search, verifier=FLAGS.verifier, verifier_criteria=FLAGS.verifier_criteria)
    if FLAGS.search != "none":
        search["search_n"] = FLAGS.search_n
    if FLAGS.search == "paths":
        search.update(search_m=FLAGS.search_m, search_start=searcher.cfg.first_branch(FLAGS.steps),
                      search_forward=FLAGS.search_forward, search_backward=FLAGS.search_backward)
    started, nfe, scored = time.time(), 0, 0
    with open(out_dir / "samples.jsonl", "a") as log:
        for start in range(0, len(prompts), FLAGS.batch_size):
            batch = prompts[start:start + FLAGS.batch_size]
            result = opened.sample(batch, verifier_of(rm, batch), seed=FLAGS.seed + start)
            nfe, scored = nfe + result.nfe_per_prompt * len(batch), scored + result.verifier_images
            for i, (prompt, image, score) in enumerate(zip(batch, result.images, result.scores)):
                name = f"{start + i:05d}.png"
                Image.fromarray(image).save(out_dir / name)
                log.write(json.dumps(dict(file=name, prompt=prompt, seed=FLAGS.seed + start, row=i,
                                          pipeline=str(FLAGS.pipeline), **opened.settings, **search,
                                          verifier_score=None if np.isnan(score) else float(score),
                                          sampling_units=result.sampling_units)) + "\n")
            progress(start + len(batch), len(prompts), started)
    wall = time.time() - started
    print(f"compute: {nfe} generator evaluations ({nfe / len(prompts) / FLAGS.steps:.2f}x plain sampling per "
          f"prompt), {scored} verifier images, {wall:.1f} s ({wall / len(prompts):.2f} s per prompt)")
    logging.info("wrote %d images to %s", len(prompts), out_dir)


def run():
    """Console-script entry point (setup.py: rdance-generate=rdance.run.generate:run)."""
    console.run(main)


if __name__ == "__main__":
    run()
