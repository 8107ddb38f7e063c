r"""Text to image with a FLUX pipeline folder: PNGs plus a JSONL of prompts, seeds and settings.

    python -m rdance.run.generate --pipeline=/ckpt/FLUX.1-dev --out_dir=/tmp/out \
        --prompts="a red cube" --prompts="two cats" --height=1024 --width=1024 --batch_size=2

Image i uses seed ``--seed + i``, so any single image can be regenerated from its JSONL line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from rdance.core import console

FLAGS = flags.FLAGS
flags.DEFINE_string("pipeline", None, "FluxPipeline folder (model_index.json layout).", required=True)
flags.DEFINE_string("out_dir", None, "Where PNGs and samples.jsonl are written.", required=True)
flags.DEFINE_multi_string("prompts", [], "Prompt; repeat the flag for several.")
flags.DEFINE_string("prompt_file", None, "Text file with one prompt per line (added after --prompts).")
flags.DEFINE_integer("height", 1024, "Image height in pixels (multiple of 16 for FLUX).")
flags.DEFINE_integer("width", 1024, "Image width in pixels (multiple of 16 for FLUX).")
flags.DEFINE_integer("steps", 28, "Euler steps.")
flags.DEFINE_float("guidance", 3.5, "Distilled guidance scale (FLUX.1-dev); ignored by schnell.")
flags.DEFINE_float("true_cfg", 1.0, "True classifier-free guidance scale; > 1 needs --negative_prompt.")
flags.DEFINE_string("negative_prompt", None, "Negative prompt for true CFG.")
flags.DEFINE_integer("batch_size", 1, "Images per compiled sampling call.")
flags.DEFINE_integer("seed", 0, "Seed of the first image; image i uses seed + i.")
flags.DEFINE_integer("max_sequence_length", 512, "T5 tokens per prompt.")
flags.DEFINE_enum("on_overflow", "warn", ["warn", "error"], "Prompt longer than the T5 limit: truncate "
                  "with a warning, or stop.")
flags.DEFINE_string("dtype", None, "Compute dtype (e.g. bfloat16); parameters stay as loaded.")


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
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images, {rate:.2f} img/s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv):
    del argv
    from PIL import Image

    from rdance.diffusion.flux_generator import FluxGenerator
    prompts = read_prompts()
    if FLAGS.batch_size < 1:
        raise app.UsageError("--batch_size must be at least 1")
    if FLAGS.true_cfg > 1 and FLAGS.negative_prompt is None:
        raise app.UsageError("--true_cfg > 1 needs --negative_prompt (use '' for an empty one)")
    out_dir = Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

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


def run():
    """Console-script entry point (setup.py: rdance-generate=rdance.run.generate:run)."""
    console.run(main)


if __name__ == "__main__":
    run()
