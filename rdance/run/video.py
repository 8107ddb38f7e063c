"""Text/image to video for ``rdance.run.generate --task=t2v|i2v``: a Wan pipeline folder sampled
``--batch_size`` prompts per call (video i from seed ``--seed + i`` whatever the batching), each
video written as PNG frames (``OUT/00000/0000.png`` ...) and, when imageio-ffmpeg is installed
(``pip install rdance[video]``), as ``OUT/00000.mp4``; one samples.jsonl line per video records what regenerates it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

MP4_NOTE = "imageio-ffmpeg is not installed: frames written as PNGs only; `pip install rdance[video]` adds MP4s"


def mp4_available() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
        return True
    except ImportError:
        return False


def write_mp4(path: Path, frames: np.ndarray, fps: int):
    """uint8 frames [F, H, W, 3] -> an H.264 MP4 (yuv420p: plays everywhere)."""
    import imageio_ffmpeg
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_frames(folder: Path, frames: np.ndarray):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for j, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{j:04d}.png")


def generate_videos(pipe, prompts: list[str], out_dir: Path, *, image, image_path, settings: dict, seed: int,
                    negative_prompt: str | None, fps: int, pipeline: str, progress, batch_size: int = 1) -> int:
    """Sample one video per prompt with ``pipe`` (a WanSampler), ``batch_size`` prompts per
    sampling call; returns how many were written."""
    mp4 = mp4_available()
    if not mp4:
        print(MP4_NOTE)
    started = time.time()
    with open(out_dir / "samples.jsonl", "a") as log:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            negative = None if negative_prompt is None else [negative_prompt] * len(batch)
            videos = pipe(batch, negative_prompts=negative, image=image, seed=seed + start, **settings)
            for i, (prompt, video) in enumerate(zip(batch, videos), start):
                name = f"{i:05d}"
                write_frames(out_dir / name, video)
                if mp4:
                    write_mp4(out_dir / f"{name}.mp4", video, fps)
                log.write(json.dumps(dict(frames=name, video=f"{name}.mp4" if mp4 else None, prompt=prompt,
                                          seed=seed + i, negative_prompt=negative_prompt, image=image_path,
                                          fps=fps, pipeline=pipeline, **settings)) + "\n")
            progress(start + len(batch), len(prompts), started)
    return len(prompts)
