"""HPDv2 and ImageRewardDB as their authors publish them (the column and file names of their
dataset cards and loading code, images in the archives they ship in), converted by the command
as a user types it: every split kept apart, rankings paired, pairs oriented by pixel content."""
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rdance.data.files import ImageFiles, json_array
from rdance.data.preference_builder import PreferenceSource
from rdance.data.records import BadRecord
from tests.conftest import REPO, environment, metrics_by_step


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def images(count: int, seed: int) -> list[np.ndarray]:
    """Distinct images: image k is filled with a colour of its own."""
    rng = np.random.default_rng(seed)
    return [np.full((16, 16, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(count)]


def convert(fmt: str, manual, data_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdance.run.preference_set", f"--format={fmt}",
                           f"--manual_dir={manual}", f"--data_dir={data_dir}"], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)


def read(data_dir, fmt, split):
    source = PreferenceSource(str(data_dir), fmt, split=split)
    return [source[i] for i in range(len(source))]


def key(image: np.ndarray) -> tuple:
    return tuple(image[0, 0])


@pytest.fixture(scope="module")
def hpdv2(tmp_path_factory):
    """train.json (image_path, human_preference) with the train images extracted in train/;
    test.json (image_path, rank, raw_annotations) with the test images in test.zip."""
    root = tmp_path_factory.mktemp("hpdv2")
    train_images, test_images = images(4, 0), images(6, 1)
    (root / "train").mkdir()
    for k, im in enumerate(train_images):
        (root / "train" / f"{k:08d}.jpg").write_bytes(encoded(im, "PNG"))  # any format PIL reads
    train = [{"prompt": "a cat", "image_path": ["00000000.jpg", "00000001.jpg"], "human_preference": [0, 1],
              "user_hash": "u1"},
             {"prompt": "a dog", "image_path": ["00000002.jpg", "00000003.jpg"], "human_preference": [1, 0],
              "user_hash": "u2"}]
    (root / "train.json").write_text(json.dumps(train, indent=1))
    with zipfile.ZipFile(root / "test.zip", "w") as z:
        for k, im in enumerate(test_images):
            z.writestr(f"test/{k:08d}.jpg", encoded(im, "PNG"))
    test = [{"prompt": "a red car", "image_path": [f"{k:08d}.jpg" for k in range(3)], "rank": [2, 1, 3],
             "raw_annotations": [[2, 1, 3]]},
            {"prompt": "a boat", "image_path": [f"{k:08d}.jpg" for k in range(3, 6)], "rank": [1, 1, 2],
             "raw_annotations": [[1, 2, 3], [2, 1, 3]]}]
    (root / "test.json").write_text(json.dumps(test))
    return root, train_images, test_images


@pytest.fixture(scope="module")
def converted(tmp_path_factory, hpdv2, imagerewarddb):
    """Both sets converted by the command as a user types it, into one data dir: {format: stdout}."""
    data_dir = tmp_path_factory.mktemp("tfds")
    out = {}
    for fmt, (root, *_) in (("hpdv2", hpdv2), ("imagerewarddb", imagerewarddb)):
        run = convert(fmt, root, data_dir)
        assert run.returncode == 0, run.stderr[-3000:]
        out[fmt] = run.stdout
    return data_dir, out


def test_hpdv2_as_published(converted, hpdv2):
    root, train_images, test_images = hpdv2
    tfds_dir, printed = converted
    # train: one pair a record; test: every two images of a prompt whose ranks differ (one tie).
    assert printed["hpdv2"].splitlines()[-1] == (f"written=7  ties=1 [test: written=5  ties=1 | train: written=2]; "
                                           f"read it as tfds:{tfds_dir}:hpdv2")
    train = read(tfds_dir, "hpdv2", "train")
    assert [key(r.images[r.label]) for r in train] == [key(train_images[1]), key(train_images[2])]
    test = read(tfds_dir, "hpdv2", "test")
    winners = [(r.prompt, key(r.images[r.label]), key(r.images[1 - r.label])) for r in test]
    k = [key(im) for im in test_images]
    assert sorted(winners) == sorted([("a red car", k[1], k[0]), ("a red car", k[0], k[2]), ("a red car", k[1], k[2]),
                                      ("a boat", k[3], k[5]), ("a boat", k[4], k[5])])
    assert sorted(r.label for r in test + train) != [0] * 7   # the winner's side alternates


@pytest.fixture(scope="module")
def imagerewarddb(tmp_path_factory):
    """metadata-{train,test}.parquet with image_path into images/<split>/<split>_N.zip (WebP);
    rows of a prompt consecutive; the extra columns of the published files."""
    root = tmp_path_factory.mktemp("irdb")
    made = {}
    for split, prompts in (("train", ["p0", "p1"]), ("test", ["p2"])):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        rows = []
        for archive, prompt_id in enumerate(prompts, 1):
            ims = images(3, int(prompt_id[1:]) + 10)
            with zipfile.ZipFile(folder / f"{split}_{archive}.zip", "w") as z:
                for k, im in enumerate(ims):
                    name = f"{prompt_id}-{k}.webp"
                    z.writestr(name, encoded(im, "WEBP"))
                    rows.append({"image_path": f"images/{split}/{split}_{archive}/{name}", "prompt_id": prompt_id,
                                 "prompt": f"prompt {prompt_id}", "classification": "People",
                                 "image_amount_in_total": 3, "rank": [3, 1, 2][k], "overall_rating": 5,
                                 "image_text_alignment_rating": 5, "fidelity_rating": 5})
            made[prompt_id] = ims
        pq.write_table(pa.Table.from_pylist(rows), root / f"metadata-{split}.parquet")
    return root, made


def test_imagerewarddb_as_published(converted, imagerewarddb):
    _, made = imagerewarddb
    tfds_dir, printed = converted
    assert printed["imagerewarddb"].splitlines()[-1].startswith("written=9 [test: written=3 | train: written=6]")
    for split, prompts in (("train", ["p0", "p1"]), ("test", ["p2"])):
        pairs = read(tfds_dir, "imagerewarddb", split)
        assert {r.prompt for r in pairs} == {f"prompt {p}" for p in prompts}
        for r in pairs:   # ranks [3, 1, 2]: image 1 beats both, image 2 beats image 0
            ims = made[r.prompt.split()[-1]]
            winner, loser = key(r.images[r.label]), key(r.images[1 - r.label])
            assert (winner, loser) in {(key(ims[1]), key(ims[0])), (key(ims[1]), key(ims[2])),
                                       (key(ims[2]), key(ims[0]))}


def test_missing_archive_and_escaping_paths_are_named(tmp_path):
    files = ImageFiles(str(tmp_path))
    with pytest.raises(BadRecord, match=r"row 3: image 'images/train/train_9/x.webp' is neither a file under "
                                        r".* nor in a zip archive there \(such as images.zip\)"):
        files.read("images/train/train_9/x.webp", "row 3")
    with pytest.raises(BadRecord, match="leads outside the dataset folder"):
        files.read("../secret.png", "row 4")
    (tmp_path / "a.zip").write_bytes(b"not a zip")
    with pytest.raises(BadRecord, match="a.zip: not a readable zip archive"):
        files.read("a/b.png", "row 5")


def test_json_array_streams_in_small_chunks_and_names_a_truncated_file(tmp_path):
    items = [{"prompt": f"p{i}", "image_path": [f"{i}.jpg"] * 3, "note": "x" * i} for i in range(300)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(items, indent=2))
    for chunk in (5, 100, 1 << 20):
        assert list(json_array(str(path), chunk)) == items
    path.write_text(json.dumps(items)[:-40])
    with pytest.raises(BadRecord, match=r"train.json: element 299 is not valid JSON .* download it again"):
        list(json_array(str(path), 100))


def photo(seed: int, size: int = 256) -> np.ndarray:
    """A photo-like image (smooth gradients and noise), which JPEG holds far smaller than PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y), x * y], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def test_source_bytes_are_stored_as_they_are(tmp_path):
    """A Pick-a-Pic parquet of JPEGs is stored as those JPEGs (no PNG re-encoding, so the set is
    about its source's size) and reads back as they decode; a JSONL set's JPEG files likewise."""
    jpegs = [encoded(photo(k), "JPEG") for k in range(8)]
    rows = {"caption": [f"photo {k}" for k in range(4)], "jpg_0": jpegs[0::2], "jpg_1": jpegs[1::2],
            "label_0": [1.0, 0.0, 1.0, 0.0], "label_1": [0.0, 1.0, 0.0, 1.0]}
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "raw" / "train-00000-of-00001.parquet")
    from rdance.run import preference_set as ps
    ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    raw = PreferenceSource(str(tmp_path / "tfds"), "pickapic_v2").source   # the stored examples
    assert [bytes(b) for k in range(4) for b in raw[k]["images"]] == jpegs   # the JPEGs themselves
    back = read(tmp_path / "tfds", "pickapic_v2", "train")
    for k, record in enumerate(back):
        for side in (0, 1):
            want = np.asarray(Image.open(io.BytesIO(jpegs[2 * k + side])).convert("RGB"))
            np.testing.assert_array_equal(record.images[side], want)

    from rdance.data.records import JsonlRecords
    (tmp_path / "jsonl").mkdir()
    for k in range(2):
        (tmp_path / "jsonl" / f"{k}.jpg").write_bytes(jpegs[k])
    (tmp_path / "jsonl" / "train.jsonl").write_text(json.dumps({"prompt": "p", "images": ["0.jpg", "1.jpg"], "label": 1}))
    record = JsonlRecords(str(tmp_path / "jsonl" / "train.jsonl"), keep_encoded=True)[0]
    assert record.encoded == (jpegs[0], jpegs[1])


def test_a_reward_model_trains_on_each_converted_set(tmp_path, converted, compile_cache):
    """Two steps of rdance.run.train_reward on each set's train split, evaluated on its test
    split, through grain as any converted set is read."""
    from tests.reward.test_train_reward import TINY
    tfds_dir, _ = converted
    flags = [f for f in TINY if not f.startswith(("--config.train.steps", "--config.data.eval_sets",
                                                  "--config.train.eval_every", "--config.data.eval_pairs"))]
    for fmt in ("hpdv2", "imagerewarddb"):
        workdir = tmp_path / fmt
        run = subprocess.run([sys.executable, "-m", "rdance.run.train_reward", f"--workdir={workdir}", *flags,
                              f"--config.data.train=tfds:{tfds_dir}:{fmt}:train",
                              f"--config.data.eval_sets=held_out=tfds:{tfds_dir}:{fmt}:test",
                              "--config.data.eval_pairs=2", "--config.train.steps=2", "--config.train.eval_every=2"],
                             cwd=REPO, env=environment(devices=2, cache=compile_cache), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        last = metrics_by_step(workdir)[2]
        assert np.isfinite(last["loss"]) and 0.0 <= last["eval/held_out/accuracy"] <= 1.0, last
