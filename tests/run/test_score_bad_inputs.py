"""rdance.run.score on bad inputs: one line naming the file (or JSONL line) and the fix, or with
--skip_bad the good inputs scored and the bad ones listed; --out written whole or not at all."""
import json
import os
import re

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from rdance.run import score

OLD_OUT = '{"name": "from an earlier run"}\n'


def save(path, height=32, width=32, value=0):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    """Two good images, one of another size, one that is no image and a folder named like one."""
    images = tmp_path / "imgs"
    images.mkdir()
    save(images / "a.png")
    save(images / "b.png", value=200)
    save(images / "odd.png", height=40)
    (images / "broken.png").write_bytes(b"not a png")
    (images / "dir.png").mkdir()
    return images


@pytest.fixture
def out(tmp_path):
    """An --out file from an earlier run: a failed run must leave it as it was."""
    path = tmp_path / "scores.jsonl"
    path.write_text(OLD_OUT)
    return path


def run(capsys, **options):
    """score.main on this command line; (exit message or None, stdout, stderr)."""
    with flagsaver.flagsaver():
        flags.FLAGS(["rdance.run.score", *(f"--{k}={v}" for k, v in options.items())])
        try:
            score.main([])
            code = None
        except SystemExit as e:
            code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_bad_image_stops_with_its_name_and_the_flag(capsys, rm_folder, folder, out):
    code, _, _ = run(capsys, rm=rm_folder, input=folder, prompt="a red circle", out=out)
    assert re.fullmatch(r"error: .*imgs/broken.png cannot be read as an image \(.*\); replace or remove it "
                        r"\(or pass --skip_bad to skip it and score the rest\)", code)
    assert out.read_text() == OLD_OUT


def test_skip_bad_scores_the_rest_lists_the_skipped_and_names_the_resized(capsys, rm_folder, folder, out):
    code, stdout, stderr = run(capsys, rm=rm_folder, input=folder, prompt="a red circle", out=out, skip_bad=True)
    assert code is None, code
    assert re.search(r"skipped 2 bad input\(s\) \(--skip_bad\):\n  .*imgs/broken.png cannot be read as an image "
                     r".*\n  .*imgs/dir.png cannot be read as an image \(Is a directory\)", stderr)
    assert ("resized 1 image(s) to the most common size 32x32 (height x width; --noresize stops instead): "
            "odd.png (40x32)") in stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["a.png", "b.png", "odd.png"]
    assert all(0 < r["score"] < 1 for r in rows) and "odd.png" in stdout
    assert sorted(os.listdir(out.parent)) == ["imgs", "scores.jsonl"]  # no temporary file left


def test_noresize_names_the_odd_images_and_sizes(capsys, rm_folder, folder, out):
    code, _, _ = run(capsys, rm=rm_folder, input=folder, prompt="a red circle", out=out, skip_bad=True,
                     resize=False)
    assert code == ("error: images differ in size (height x width): most are 32x32, but odd.png (40x32); "
                    "drop --noresize to resize them to 32x32, or score each size in its own run")
    assert out.read_text() == OLD_OUT


def test_a_too_long_prompt_names_its_tokens_the_limit_and_the_flag(capsys, rm_folder, tmp_path, out):
    (tmp_path / "imgs").mkdir()
    save(tmp_path / "imgs" / "a.png")
    long_prompt = " ".join(["two red circles"] * 40)
    code, _, _ = run(capsys, rm=rm_folder, input=tmp_path / "imgs", prompt=long_prompt, out=out)
    found = re.fullmatch(r"error: a.png: its question \(prompt, criteria and image tokens\) is (\d+) tokens, over "
                         r"the RM's limit of 120; pass --max_prompt_tokens=(\d+) or more \(or pass --skip_bad to "
                         r"skip it and score the rest\)", code)
    assert found and found[1] == found[2] and int(found[1]) > 120
    assert out.read_text() == OLD_OUT
    code, _, _ = run(capsys, rm=rm_folder, input=tmp_path / "imgs", prompt=long_prompt, out=out,
                     max_prompt_tokens=found[1])
    assert code is None and json.loads(out.read_text())["name"] == "a.png"


def test_jsonl_bad_image_names_the_line_and_skip_bad_scores_the_rest(capsys, rm_folder, tmp_path, out):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png", value=200)
    lines = [{"prompt": "a red circle", "images": ["a.png", "b.png"], "label": 1},
             {"prompt": "a red circle", "images": ["missing.png"], "label": 1},
             {"prompt": "a red circle", "images": ["a.png"], "label": 1, "criteria": "aesthetics"},
             {"prompt": "a red circle", "images": ["a.png"], "label": 1, "criteria": "plausibility"}]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, _ = run(capsys, rm=rm_folder, input=data, out=out)
    assert re.fullmatch(r"error: .*line 2 of .*in.jsonl.*missing.png.* \(or pass --skip_bad to skip it and score "
                        r"the rest\)", code)
    assert out.read_text() == OLD_OUT
    code, _, stderr = run(capsys, rm=rm_folder, input=data, out=out, skip_bad=True, batch_size=2)
    assert code is None, code
    assert re.search(r"skipped 1 bad input\(s\) \(--skip_bad\):\n  .*line 2 of .*missing.png", stderr)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["name"], r["kind"]) for r in rows] == [("record 0", "pairwise"), ("record 2", "pointwise"),
                                                      ("record 3", "pointwise")]
    # One batch, two criteria: each record is asked its own question.
    assert rows[1]["score"] != rows[2]["score"]


def test_jsonl_paths_outside_its_folder_need_the_flag_the_error_names(capsys, rm_folder, tmp_path, out):
    (tmp_path / "data").mkdir()
    save(tmp_path / "outside.png")
    data = tmp_path / "data" / "in.jsonl"
    data.write_text(json.dumps({"prompt": "a red circle", "images": ["../outside.png"], "label": 1}) + "\n")
    code, _, _ = run(capsys, rm=rm_folder, input=data, out=out)
    assert re.fullmatch(r"error: line 1 of .*in.jsonl: .*'../outside.png' leads outside the data folder .*"
                        r"--allow_outside_paths.*", code)
    assert out.read_text() == OLD_OUT
    code, _, _ = run(capsys, rm=rm_folder, input=data, out=out, allow_outside_paths=True)
    assert code is None and json.loads(out.read_text())["name"] == "record 0"


def test_out_is_replaced_whole_or_not_at_all(tmp_path, out):
    class Unwritable:
        pass
    with pytest.raises(TypeError):
        score.write_atomically(str(out), ['{"name": "new"}\n', Unwritable()])
    assert out.read_text() == OLD_OUT and os.listdir(tmp_path) == ["scores.jsonl"]
    score.write_atomically(str(out), ['{"name": "new"}\n'])
    assert out.read_text() == '{"name": "new"}\n' and os.listdir(tmp_path) == ["scores.jsonl"]


def test_an_image_over_the_pixel_limit_names_the_flag(capsys, rm_folder, tmp_path, out):
    images = tmp_path / "big"
    images.mkdir()
    save(images / "a.png")
    code, _, _ = run(capsys, rm=rm_folder, input=images, prompt="a red circle", out=out, max_image_pixels=1000)
    assert re.fullmatch(r"error: .*big/a.png has 1024 pixels, over the limit of 1000; shrink it, or raise the limit "
                        r"with --max_image_pixels \(or pass --skip_bad to skip it and score the rest\)", code), code
    assert out.read_text() == OLD_OUT
