"""`python -m rdance.run.generate --task=t2v|i2v` as users type it (a subprocess) on the tiny
saved Wan pipelines: PNG frames, an MP4 (imageio-ffmpeg), the JSONL line with its seed and
settings; --batch_size videos per call; frames only with a one-line note when imageio-ffmpeg is
missing; one-line errors for i2v without --image, a text-to-video folder used for i2v, and
num_frames that is not 4k+1."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_module

SIZE = ["--num_frames=5", "--height=32", "--width=16"]


def generate(*args, env_path=None, cache=None):
    import os
    if env_path is not None:   # a folder first on sys.path of the child (a stand-in package)
        os.environ["PYTHONPATH"] = f"{env_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:
        return run_module("rdance.run.generate", *args, devices=1, timeout=300, cache=cache)
    finally:
        if env_path is not None:
            os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]


def test_t2v_writes_frames_mp4_and_jsonl(wan_pipes, tmp_path, compile_cache):
    folder = wan_pipes["t2v", "unipc"][0]
    out = tmp_path / "out"
    result = generate("--task=t2v", f"--pipeline={folder}", f"--out_dir={out}", "--prompts=a cat surfs", *SIZE,
                      "--steps=2", "--guidance=5", "--negative_prompt=blurry", "--max_sequence_length=16", "--seed=3",
                      cache=compile_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1/1 videos" in result.stderr
    line = json.loads((out / "samples.jsonl").read_text())
    assert (line["prompt"], line["seed"], line["video"], line["num_frames"]) == ("a cat surfs", 3, "00000.mp4", 5)
    frames = np.stack([np.asarray(Image.open(out / "00000" / f"{j:04d}.png")) for j in range(5)])
    assert frames.shape == (5, 32, 16, 3) and not (out / "00000" / "0005.png").exists()
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(out / "00000.mp4"))
    meta = next(reader)
    assert tuple(meta["size"]) == (16, 32) and meta["fps"] == 16 and len(list(reader)) == 5
    assert frames.std() > 1   # a video, not a blank


def test_i2v_batched_without_imageio_ffmpeg_writes_frames_and_a_note(wan_pipes, first_frame, tmp_path,
                                                                      compile_cache):
    """Three prompts in batches of 2 and 1: every video's frames and JSONL line, seeds 0, 1, 2."""
    folder = wan_pipes["i2v", "euler"][0]
    Image.fromarray(first_frame).save(tmp_path / "first.png")
    missing = tmp_path / "no_ffmpeg"
    missing.mkdir()
    (missing / "imageio_ffmpeg.py").write_text("raise ImportError('imageio_ffmpeg is not installed')\n")
    out = tmp_path / "out"
    result = generate("--task=i2v", f"--pipeline={folder}", f"--out_dir={out}", f"--image={tmp_path / 'first.png'}",
                      "--prompts=the cat jumps", "--prompts=the cat sits", "--prompts=the cat sleeps", *SIZE,
                      "--steps=2", "--guidance=4", "--max_sequence_length=16", "--batch_size=2", env_path=missing,
                      cache=compile_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install rdance[video]" in result.stdout
    assert not list(out.glob("*.mp4"))
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"], r["video"], r["frames"]) for r in lines] == [
        ("the cat jumps", 0, None, "00000"), ("the cat sits", 1, None, "00001"), ("the cat sleeps", 2, None, "00002")]
    assert "3/3 videos" in result.stderr
    videos = [np.stack([np.asarray(Image.open(out / f"{i:05d}" / f"{j:04d}.png")) for j in range(5)]) for i in range(3)]
    assert all(v.shape == (5, 32, 16, 3) for v in videos) and not (out / "00000" / "0005.png").exists()
    assert np.abs(videos[0].astype(int) - videos[2].astype(int)).max() > 0   # its own noise, not a copy


@pytest.mark.parametrize("task,args,message", [
    ("i2v", ["--num_frames=5"], "--task=i2v needs --image=PATH"),
    ("i2v", ["--num_frames=5", "--image={image}"], "text-to-video pipeline without an image_encoder"),
    ("t2v", ["--num_frames=6"], "num_frames 6 must be 4k+1"),
    ("t2v", ["--num_frames=5", "--pipeline={i2v}"], "image-to-video pipeline: give the first frame"),
])
def test_bad_inputs_are_one_line_errors(wan_pipes, tmp_path, task, args, message):
    Image.new("RGB", (16, 32)).save(tmp_path / "x.png")
    fill = dict(image=tmp_path / "x.png", i2v=wan_pipes["i2v", "euler"][0])
    args = [a.format(**fill) for a in args]
    pipeline = [] if any(a.startswith("--pipeline") for a in args) else [f"--pipeline={wan_pipes['t2v', 'euler'][0]}"]
    result = generate(f"--task={task}", *pipeline, f"--out_dir={tmp_path / 'o'}", "--prompts=x", "--height=32",
                      "--width=16", *args)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if message in line]
    assert errors, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
