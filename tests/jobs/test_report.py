"""Reports: mean ± std, values read back from metrics.jsonl, PNG plots and grids, Markdown and
HTML documents, and the ablation tables built from stage folders."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from rdance.run import ablate

from rdance.jobs import demo_report, report
from rdance.jobs.stages import Stage, StageRun


def write_metrics(folder, records):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(folder, "DONE.json"), "w") as f:
        json.dump({"hash": "x", "wall_s": 10.0}, f)


def test_mean_std_and_formatting():
    assert report.mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert report.mean_std([0.4]) == (0.4, 0.0)
    assert report.format_mean_std([0.5, 0.6, 0.7]) == "0.600 ± 0.100"
    assert report.format_mean_std([3e-4, 4e-4]) == "3.5e-04 ± 7.1e-05"
    assert report.format_mean_std([]) == "n/a"
    assert report.smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])


def test_values_from_metrics(tmp_path):
    write_metrics(tmp_path, [{"step": 0, "eval/judge": 0.2}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 3.0},
                             {"step": 2, "eval/judge": 0.5}, {"step": 3, "loss": 5.0}, {"step": 4, "loss": 7.0}])
    records = report.read_metrics(str(tmp_path))
    assert report.value(records, "eval/judge") == 0.5 and report.value(records, "eval/judge", "first") == 0.2
    assert report.value(records, "loss", "late_mean") == 7.0
    assert report.series(records, "loss") == ([1, 2, 3, 4], [1.0, 3.0, 5.0, 7.0])
    with pytest.raises(KeyError, match="reward/mean is not in .*it has eval/judge, loss"):
        report.value(records, "reward/mean")


def test_pictures_and_documents(tmp_path):
    plot = report.line_plot({"a": ([0, 1, 2], [0.1, float("nan"), 0.3]), "b": ([5], [0.2])}, "t", "x", "y")
    assert plot.size == (640, 380) and len(set(plot.getdata())) > 3
    assert report.line_plot({}, "empty", "x", "y").size == (640, 380)
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 8, 8, 3), dtype=np.uint8)
    grid = report.grid_image(images, scale=2)
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)
    assert np.array_equal(np.asarray(grid)[2:18:2, 2:18:2], images[0, 0])
    comparison = report.comparison_image([("a", images[0], np.ones(3)), ("b", images[1], np.zeros(3))], 2)
    assert comparison.size == (96 + 3 * (16 + 6), 20 + 2 * (16 + 14 + 6) + 6)   # a band of column numbers on top

    doc = report.Document(str(tmp_path / "r"))
    doc.heading("Title", 1)
    doc.paragraph("text with `code`")
    doc.table(["a", "b"], [[1, "x"]])
    doc.image(plot, "plot.png", "a plot")
    path = doc.write("report", "T")
    md = open(path).read()
    assert "# Title" in md and "| a | b |\n|---|---|\n| 1 | x |" in md and "![a plot](plot.png)" in md
    html = open(tmp_path / "r" / "report.html").read()
    assert "<code>code</code>" in html and "data:image/png;base64," in html
    assert Image.open(tmp_path / "r" / "plot.png").size == (640, 380)


def test_grid_rows_are_named_by_their_prompts():
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 8, 8, 3), dtype=np.uint8)
    plain = report.grid_image(images, scale=4)
    labelled = report.grid_image(images, scale=4, labels=["a red cube", "two blue spheres left of a green cone"])
    assert labelled.size == (plain.size[0] + report.LABEL_WIDTH, plain.size[1])
    band = np.asarray(labelled)[:, :report.LABEL_WIDTH]
    assert (band < 100).any(axis=-1).sum() > 20                       # dark text on the white band
    assert np.array_equal(np.asarray(labelled)[:, report.LABEL_WIDTH:], np.asarray(plain))
    long = "two blue spheres to the left of a green cone and a red cube above a yellow star"
    lines = report.wrap_label(long, 152, 2)
    assert len(lines) == 2 and lines[0].startswith("two blue spheres") and lines[1].endswith("...")
    assert long.startswith(" ".join(lines)[:-3]) and all(report._font(11).getlength(x) <= 152 for x in lines)
    assert report.wrap_label("a red cube", 152, 2) == ["a red cube"]
    assert report.row_caption(np.array([0.25, 0.5])) == ["judge 0.375", "2 prompts x 1"]


def test_demo_report_says_what_each_judge_figure_counts(tmp_path, monkeypatch):
    """The tables are over every held-out prompt × N samples, the comparison's row means over the
    shown prompts × sample 0: each says so, every generator has a column, and the sample grids
    (before, and the largest RM's run) name their prompts."""
    folder = tmp_path / "evaluate"
    folder.mkdir()
    prompts = ["a red cube", "two blue spheres", "a green cone left of a star"]
    checks = {"colour_found": 0.8, "shape_given_colour": 0.5, "present": 0.4, "relation": 0.25}
    scores = {"prompts": prompts, "kinds": ["single", "count", "relation"], "samples_per_prompt": 4,
              "num_steps": 8, "target": {"judge": 0.9}, "grid_prompts": 2, "grid_samples": 3,
              "generators": {label: {"judge": j, "by_kind": {"single": j, "count": j, "relation": j},
                                     "checks": {k: v + j for k, v in checks.items()}}
                             for label, j in (("before", 0.2), ("control", 0.25), ("small", 0.3), ("large", 0.5))}}
    (folder / "scores.json").write_text(json.dumps(scores))
    samples = np.random.default_rng(0).integers(0, 255, (4, 3, 8, 8, 3), dtype=np.uint8)
    np.savez(folder / "samples.npz", before=samples, control=samples, small=samples, large=samples[::-1],
             render=samples[0])
    Image.new("RGB", (40, 30), "white").save(folder / "comparison.png")
    given, grid_image = [], demo_report.grid_image

    def spy(rows, scale, **labels):
        given.append(labels)
        return grid_image(rows, scale, **labels)
    monkeypatch.setattr(demo_report, "grid_image", spy)
    doc = report.Document(str(tmp_path / "report"))
    demo_report.judge_section(doc, {"evaluate": Stage("evaluate", "", "", "", workdir=str(folder))},
                              ["control", "small", "large"], scores, scale=2)
    md = doc.markdown()
    assert "| prompts | n | before | control | small | large |" in md
    assert "\n| all | 3 | 0.200 | 0.250 | 0.300 | 0.500 |" in md
    assert "\n| shape_given_colour | 0.700 | 0.750 | 0.800 | 1.000 |" in md
    assert "mean over these 2 prompts × 1 sample, not the tables' 3 prompts × 4 samples" in md
    assert "Columns: 1. a red cube; 2. two blue spheres." in md
    assert given == [{"labels": prompts[:2]}] * 2
    for label in ("before", "large"):
        assert Image.open(tmp_path / "report" / f"grid_{label}.png").size == (report.LABEL_WIDTH + 3 * 18 + 2,
                                                                              2 * 18 + 2)


def test_the_scaling_table_sets_each_rm_beside_its_run_and_the_control(tmp_path):
    """One row per fine-tuning run: its RM's accuracy (the control's is the largest RM's), the late
    reward and its window std, the judge, and the gains over before and over the control."""
    stages = {}
    for size, acc in (("small", 0.6), ("large", 0.85)):
        write_metrics(tmp_path / f"rm_{size}", [{"step": 100, "eval/in_domain/accuracy": acc - 0.1},
                                                {"step": 200, "eval/in_domain/accuracy": acc,
                                                 "eval/samples/accuracy": acc - 0.2}])
        (tmp_path / f"rm_{size}" / "export").mkdir()
        stages[f"rm_{size}"] = Stage(f"rm_{size}", "", "", "", workdir=str(tmp_path / f"rm_{size}"))
    with open(tmp_path / "rm_large" / "export" / "model.safetensors", "wb") as f:
        header = json.dumps({"a": {"dtype": "F32", "shape": [1000, 250], "data_offsets": [0, 10 ** 6]}}).encode()
        f.write(len(header).to_bytes(8, "little") + header)
    for label, reward in (("control", 0.5), ("small", 0.6), ("large", 0.8)):
        write_metrics(tmp_path / f"finetune_{label}", [{"step": s, "reward/mean": reward, "reward/window_std": 0.1}
                                                       for s in range(8)])
        stages[f"finetune_{label}"] = Stage(f"finetune_{label}", "", "", "", workdir=str(tmp_path / f"finetune_{label}"))
    scores = {"prompts": ["p"] * 64, "samples_per_prompt": 4,
              "generators": {"before": {"judge": 0.5}, "control": {"judge": 0.52}, "small": {"judge": 0.55},
                             "large": {"judge": 0.7}}}
    doc = report.Document(str(tmp_path / "report"))
    demo_report.scaling_section(doc, stages, ["control", "small", "large"], scores)
    md = doc.markdown()
    assert "| before fine-tuning |  |  |  |  |  | 0.500 |  |  |" in md
    assert "| control | large (0.25M), reward weight 0 | 0.850 | 0.650 | 0.500 | 0.100 | 0.520 | +0.020 | +0.000 |" in md
    assert "| small | small (0.00M) | 0.600 | 0.400 | 0.600 | 0.100 | 0.550 | +0.050 | +0.030 |" in md
    assert "| large | large (0.25M) | 0.850 | 0.650 | 0.800 | 0.100 | 0.700 | +0.200 | +0.180 |" in md
    assert "Judge gain over the control run, whose generator saw the same prompts, steps and anchor loss without " \
           "the reward: small +0.030, large +0.180." in md


def test_the_stage_table_counts_every_attempt(tmp_path):
    doc = report.Document(str(tmp_path / "report"))
    stages = {name: Stage(name, name + " it", "", "", estimate_s=60, workdir=str(tmp_path / name)) for name in "ab"}
    demo_report.stages_section(doc, stages, [StageRun("a", False, 281.0, str(tmp_path / "a"), attempts=2),
                                             StageRun("b", True, 30.0, str(tmp_path / "b"))])
    md = doc.markdown()
    assert "| stage | what | wall time (all attempts) | budget | folder |" in md
    assert "| a | a it | 4:41 (2 attempts) | 1:00 | a |" in md and "| b | b it | 0:30 (earlier run) | 1:00 | b |" in md
    assert "The budgets were timed on 2 idle cores of an AMD EPYC; this report was written on " in md


def test_ablation_tables_aggregate_seeds(tmp_path):
    config = ablate.load_ablation("paradigm", "ci")
    cells, lookup = [], {}
    judge = {"pairwise": [0.5, 0.6, 0.7], "pointwise": [0.3, 0.3, 0.3]}
    for arm, values in judge.items():
        for seed, j in enumerate(values):
            names = {}
            for kind, records in (("rm", [{"step": 10, "eval/in_domain/accuracy": 0.6 + seed / 100}]),
                                  ("finetune", [{"step": 0, "eval/judge": 0.2},
                                                {"step": 4, "eval/judge_ema": j, "reward/window_std": 0.01}])):
                name = f"{kind}.{arm}.{seed}"
                write_metrics(tmp_path / name, records)
                lookup[name] = Stage(name, "", "", "", workdir=str(tmp_path / name))
                names[kind] = name
            cells.append(ablate.Cell("paradigm", arm, seed, names))
    results = ablate.collect({"paradigm": config}, cells, lookup)
    r = results["paradigm"]
    assert r["arms"]["pairwise"]["judge"] == [0.5, 0.6, 0.7] and r["start_judge"] == [0.2] * 6
    assert r["stage_time_s"] == 120.0
    text = ablate.tables(results)
    assert "| pairwise generative (with reference) | 0.600 ± 0.100 | 0.610 ± 0.010 | 0.010 ± 0.000 |" in text
    assert "| pointwise generative (no reference) | 0.300 ± 0.000 |" in text
    assert "over 3 seed(s)" in text and "before RL): 0.200" in text


def test_ablation_plan_shares_stages_across_arms_and_ablations():
    """All four ablations, 3 seeds: one generator, three VLM sizes, and only the RMs and
    fine-tuning runs that differ (the pairwise arm of a seed serves four ablations)."""
    configs, cells, stages = ablate.plan(list(ablate.ABLATIONS), "", 0)
    distinct, _ = ablate.resolve(stages, lambda s: s.name)
    kinds = [s.name.split(".")[0] for s in distinct]
    assert len(cells) == 3 * (4 + 3 + 3 + 2)
    # The paradigm control (reward weight 0) fine-tunes on its own but shares the pairwise RM.
    assert {k: kinds.count(k) for k in set(kinds)} == {"generator": 1, "vlm": 3, "rm": 18, "finetune": 27}
    assert ablate.arm_order(configs["paradigm"]) == ["no_rl", "regressive", "pointwise", "pairwise"]
    with pytest.raises(ablate.StageError, match="no ablation 'nope'"):
        ablate.load_ablation("nope")
    with pytest.raises(ablate.StageError, match="has no arm"):
        ablate.arm_order(configs["cot"], ["nope"])


def test_a_torn_metrics_line_is_skipped_by_the_report(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n{"step": 3, "lo')
    records = report.read_metrics(str(tmp_path))
    assert sorted(records) == [1, 2] and records[2]["loss"] == 1.0
