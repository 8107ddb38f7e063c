"""Ties kept as soft targets or dropped, and row weights (the set's own, per prompt, or none),
stored in the converted set; a set written before them (builder 1.0.0) still reads."""
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rdance.data import preference_builder, sources
from rdance.data.preference_builder import PreferenceSource
from rdance.data.records import BadRecord
from rdance.run import preference_set as ps
from tests.conftest import REPO
from tests.data.test_preference_set import pickapic_rows, records, same  # noqa: F401 (records: a fixture)


def pickapic_with_ties(records, folder, counts=(2, 2, 1, 3, 3, 3)):
    """records[0:6] as Pick-a-Pic rows with num_example_per_prompt ``counts``; rows 1 and 4 ties."""
    table = pickapic_rows(records[:6], ties=(1, 4)).append_column(
        "num_example_per_prompt", pa.array(list(counts), pa.int64()))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "train-00000-of-00001-aa.parquet")


def read(data_dir, fmt="pickapic_v2", split="train"):
    source = PreferenceSource(str(data_dir), fmt, split=split)
    return [source[i] for i in range(len(source))]


def test_ties_dropped_by_default_and_kept_soft_when_asked_with_the_sets_weights(tmp_path, records):
    pickapic_with_ties(records, tmp_path / "raw" / "data")
    dropped = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "drop"))
    assert dropped["splits"]["train"] == {"written": 4, "ties": 2}
    back = read(tmp_path / "drop")
    assert [r.tie for r in back] == [False] * 4
    np.testing.assert_allclose([r.weight for r in back], [1 / 2, 1 / 1, 1 / 3, 1 / 3], rtol=1e-6)

    soft = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "soft"), ties="soft")
    assert soft["splits"]["train"] == {"written": 6, "soft_ties": 2}
    back = read(tmp_path / "soft")
    assert [r.tie for r in back] == [False, True, False, False, True, False]
    np.testing.assert_allclose([r.weight for r in back], [1 / 2, 1 / 2, 1, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    for i in (0, 2, 3, 5):
        same(records[i], back[i])          # oriented by pixel content
    for i in (1, 4):                       # a tie keeps the row's own order, label 0
        assert back[i].label == 0
        np.testing.assert_array_equal(back[i].images[0], records[i].images[0])

    none = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "none"), weights="none")
    assert [r.weight for r in read(tmp_path / "none")] == [1.0] * 4


def test_per_prompt_weights_count_each_prompts_records_in_its_split(tmp_path, records):
    """--weights=per_prompt: 1 / the records of the prompt (after ties are dropped or kept)."""
    prompts = ["a", "a", "b", "a", "c", "c"]
    table = pickapic_rows(records[:6], ties=(3,))
    table = table.set_column(0, "caption", pa.array(prompts))
    (tmp_path / "raw").mkdir()
    pq.write_table(table, tmp_path / "raw" / "train-00000-of-00001.parquet")
    ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "drop"), weights="per_prompt")
    back = read(tmp_path / "drop")
    assert [(r.prompt, r.weight) for r in back] == [("a", 0.5), ("a", 0.5), ("b", 1.0), ("c", 0.5), ("c", 0.5)]
    ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "soft"), weights="per_prompt", ties="soft")
    back = read(tmp_path / "soft")
    np.testing.assert_allclose([r.weight for r in back], [1 / 3, 1 / 3, 1, 1 / 3, 0.5, 0.5], rtol=1e-6)


def test_rankings_make_soft_ties_of_equal_ranks_but_not_of_unchosen_images():
    counter = sources.Counter()
    pairs = list(sources.ranked_pairs([1, 1, 2], counter, ties="soft"))
    assert pairs == [(0, 1, 0, True), (0, 2, 0, False), (2, 1, 1, False)]
    assert counter.counts == {"soft_ties": 1}
    # HPDv2's human_preference picks one of several: the others were not judged equal.
    ranks, judged = sources._hpdv2_ranks({"human_preference": [0, 1, 0]}, 3, "element 0")
    assert judged is False
    counter = sources.Counter()
    assert all(not tie for *_, tie in sources.ranked_pairs(ranks, counter, "soft" if judged else "drop"))


def test_a_bad_weight_and_a_bad_option_are_named(tmp_path, records):
    pickapic_with_ties(records, tmp_path / "raw", counts=(2, 2, 0, 3, 3, 3))
    with pytest.raises(BadRecord, match=r"row 2 of .*: num_example_per_prompt=0, not a count >= 1; fix the row, "
                                        r"or convert with --weights=none or --weights=per_prompt"):
        ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()
    counts = ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "tfds"), skip_bad_records=True)
    assert counts["splits"]["train"] == {"written": 3, "ties": 2, "bad": 1, "bad/bad_weight": 1}
    with pytest.raises(ValueError, match=r"--ties='half'; use one of drop, soft"):
        ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "other"), ties="half")


def test_a_set_converted_before_ties_and_weights_still_reads(tmp_path, records, monkeypatch):
    """Builder 1.0.0 stored no tie or weight: its sets read as records with no tie and weight 1."""
    pickapic_with_ties(records, tmp_path / "raw")
    cls = preference_builder.builder_class()
    with monkeypatch.context() as m:    # the builder as it was: 1.0.0 and its features
        m.setattr(cls, "VERSION", cls.SUPPORTED_VERSIONS[0])
        m.setattr(cls, "SUPPORTED_VERSIONS", [])
        ps.convert("pickapic_v2", str(tmp_path / "raw"), str(tmp_path / "tfds"))
    assert os.listdir(tmp_path / "tfds" / "preference_set" / "pickapic_v2") == ["1.0.0"]
    source = PreferenceSource(str(tmp_path / "tfds"), "pickapic_v2")
    assert source.version == "1.0.0" and "weight" not in source.source[0]
    back = [source[i] for i in range(len(source))]
    assert [(r.tie, r.weight) for r in back] == [(False, 1.0)] * 4
    for a, b in zip([records[i] for i in (0, 2, 3, 5)], back):
        same(a, b)


def test_command_flags(tmp_path, records):
    pickapic_with_ties(records, tmp_path / "raw" / "data")
    run = subprocess.run([sys.executable, "-m", "rdance.run.preference_set", "--format=pickapic_v2",
                          f"--manual_dir={tmp_path / 'raw'}", f"--data_dir={tmp_path / 'tfds'}", "--ties=soft",
                          "--weights=per_prompt"], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "\nwritten=6  soft_ties=2; read it as tfds:" in "\n" + run.stdout, run.stdout
    assert [r.weight for r in read(tmp_path / "tfds")] == [1.0] * 6   # every record its own prompt


def test_a_reward_model_trains_on_a_set_with_soft_ties_and_weights(tmp_path, records, compile_cache):
    """Converted by the command with --ties=soft (Pick-a-Pic's own weights), then two steps of
    rdance.run.train_reward with rm.row_weights=true through grain, evaluated on its test split."""
    from tests.conftest import environment, metrics_by_step
    from tests.reward.test_train_reward import TINY
    pickapic_with_ties(records, tmp_path / "raw" / "data")
    pq.write_table(pickapic_rows(records[:4]), tmp_path / "raw" / "data" / "test-00000-of-00001-bb.parquet")
    convert = subprocess.run([sys.executable, "-m", "rdance.run.preference_set", "--format=pickapic_v2",
                              f"--manual_dir={tmp_path / 'raw'}", f"--data_dir={tmp_path / 'tfds'}", "--ties=soft"],
                             cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                             timeout=300)
    assert convert.returncode == 0, convert.stderr[-2000:]
    assert "[test: written=4 | train: written=6  soft_ties=2]" in convert.stdout, convert.stdout
    flags = [f for f in TINY if not f.startswith(("--config.train.steps", "--config.data.eval_sets",
                                                  "--config.train.eval_every", "--config.data.eval_pairs"))]
    tfds_dir, workdir = tmp_path / "tfds", tmp_path / "rm"
    run = subprocess.run([sys.executable, "-m", "rdance.run.train_reward", f"--workdir={workdir}", *flags,
                          f"--config.data.train=tfds:{tfds_dir}:pickapic_v2:train",
                          f"--config.data.eval_sets=held_out=tfds:{tfds_dir}:pickapic_v2:test",
                          "--config.rm.row_weights=true", "--config.data.eval_pairs=4", "--config.train.steps=2",
                          "--config.train.eval_every=2"],
                         cwd=REPO, env=environment(devices=2, cache=compile_cache), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = metrics_by_step(workdir)
    assert all(np.isfinite(metrics[s]["loss"]) for s in (1, 2)), metrics
    assert 0.0 <= metrics[2]["eval/held_out/accuracy"] <= 1.0, metrics[2]
