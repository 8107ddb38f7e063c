"""The demo's report (WORKDIR/report/report.md and .html): reward scaling side by side. For each RM
size, its accuracy on held-out pairs, the reward and reward-std curves of the fine-tuning against
it, and the judge of the fine-tuned generator; beside them a control run (the reward's weight at
0) and the generator before fine-tuning, on the same held-out prompts and noise.

Stage names are those of rdance.run.demo: ``rm_<size>``, ``finetune_<size>``, ``finetune_control``,
``evaluate`` and, when the demo trained its VLMs itself, ``vlm_<size>``. Nothing here imports jax.
"""
from __future__ import annotations

import json
import os
import struct
import time
from typing import Sequence

import numpy as np

from rdance.jobs.report import Document, grid_image, line_plot, read_metrics, series, smooth, value

CHECKS = ("colour_found", "shape_given_colour", "present", "count", "relation")


def _load_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def parameter_count(folder: str) -> int:
    """Parameters in a folder's safetensors files, read from their headers (no tensor is loaded)."""
    total = 0
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".safetensors"):
            with open(os.path.join(folder, name), "rb") as f:
                header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
            total += sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")
    return total


def _last(records: dict, key: str) -> float:
    values = series(records, key)[1]
    return values[-1] if values else float("nan")


def run_labels(config: dict) -> list[str]:
    """The fine-tuning runs in report order: the control (if any), then the sizes, small to large."""
    sizes = [s for s in config["order"].split(",") if s]
    return (["control"] if config.get("control") else []) + sizes


def demo_report(workdir: str, stages: dict, runs: Sequence, config: dict, with_html: bool = True) -> str:
    """Write the report from the stages' outputs; returns the Markdown file's path. ``stages``:
    name -> Stage; ``runs``: the Runner's StageRuns; ``config``: the demo config as a dict."""
    doc = Document(os.path.join(workdir, "report"))
    doc.heading("RewardDance demo on the synthetic world", 1)
    start = ("the shipped pretrained world generator and VLMs (rdance/world/pretrained)" if config.get("pretrained")
             else "a world generator and VLMs pretrained in this run")
    doc.paragraph(f"`python -m rdance.run.demo --workdir={workdir}` (config variant `{config.get('variant')}`), "
                  f"report written {time.strftime('%Y-%m-%d %H:%M')}. From {start}, a generative reward model "
                  "(P(\"yes\") of a VLM) is trained at each size, the generator is fine-tuned with ReFL against "
                  "each, and a control run fine-tunes with the reward's weight at 0; the programmatic judge, which "
                  "trains nothing, measures every generator on the same held-out prompts and noise.")
    labels = run_labels(config)
    scores = _load_json(os.path.join(stages["evaluate"].workdir, "scores.json"))
    scaling_section(doc, stages, labels, scores)
    judge_section(doc, stages, labels, scores, int(config.get("evaluate", {}).get("scale", 3)))
    rm_section(doc, stages, [label for label in labels if label != "control"])
    finetune_section(doc, stages, labels)
    stages_section(doc, stages, runs)
    return doc.write("report", "RewardDance demo", with_html)


def scaling_section(doc: Document, stages: dict, labels: list[str], scores: dict) -> None:
    """The paper's story in one table: each RM's accuracy, what fine-tuning against it did to the
    reward and its variance, and the judge after, against the control."""
    gens = scores["generators"]
    before = gens["before"]["judge"]
    control = gens["control"]["judge"] if "control" in gens else None
    count, per = len(scores["prompts"]), scores["samples_per_prompt"]
    doc.heading("Reward scaling: RM sizes side by side")
    rows = [["before fine-tuning", "", "", "", "", "", _fmt(before), "", ""]]
    for label in labels:
        ft = read_metrics(stages[f"finetune_{label}"].workdir)
        size = labels[-1] if label == "control" else label
        rm = read_metrics(stages[f"rm_{size}"].workdir)
        params = parameter_count(os.path.join(stages[f"rm_{size}"].workdir, "export"))
        rm_name = f"{size} ({params / 1e6:.2f}M)" + (", reward weight 0" if label == "control" else "")
        judge = gens[label]["judge"]
        rows.append([label, rm_name, _fmt(_last(rm, "eval/in_domain/accuracy")), _fmt(_last(rm, "eval/samples/accuracy")),
                     _fmt(value(ft, "reward/mean", "late_mean")), _fmt(_last(ft, "reward/window_std")), _fmt(judge),
                     f"{judge - before:+.3f}", "" if control is None else f"{judge - control:+.3f}"])
    doc.table(["fine-tuning run", "RM (parameters)", "RM accuracy: held-out world pairs",
               "RM accuracy: pairs of the generator's samples", "late reward (P(yes), last quarter)",
               "late reward std (sliding window)", f"judge ({count} prompts × {per} samples)", "vs before",
               "vs control"], rows)
    sizes = [label for label in labels if label != "control"]
    if control is not None and sizes:
        gains = ", ".join(f"{s} {gens[s]['judge'] - control:+.3f}" for s in sizes)
        doc.paragraph(f"Judge gain over the control run, whose generator saw the same prompts, steps and anchor loss "
                      f"without the reward: {gains}. RM accuracy is pairwise (both orders averaged) on held-out "
                      "pairs: rendered world pairs (a faithful render against a near miss or another mistake) and "
                      "judge-labelled pairs of the starting generator's own samples, the images fine-tuning shows "
                      "the RM. The late reward std is the sliding-window std of the batch rewards at the last step, "
                      "the paper's reward-variance signal.")


def judge_section(doc: Document, stages: dict, labels: list[str], scores: dict, scale: int = 3) -> None:
    gens = scores["generators"]
    names = ["before"] + labels
    count, per = len(scores["prompts"]), scores["samples_per_prompt"]
    kinds = scores["kinds"]
    doc.heading("Judge by prompt kind and by check")
    doc.paragraph(f"Mean judge alignment in [0, 1] (the fraction of a prompt's checks passed) on {count} held-out "
                  f"prompts × {per} samples, the same noise for every generator ({scores['num_steps']} sampler "
                  f"steps). Faithful renders of the same prompts score {scores['target']['judge']:.3f}.")
    rows = [["all", count] + [_fmt(gens[n]["judge"]) for n in names]]
    rows += [[kind, kinds.count(kind)] + [_fmt(gens[n]["by_kind"][kind]) for n in names]
             for kind in gens["before"]["by_kind"]]
    doc.table(["prompts", "n"] + names, rows)
    checks = [c for c in CHECKS if c in gens["before"].get("checks", {})]
    if checks:
        doc.paragraph("Pass rate of each kind of check over every object a prompt asks for: `colour_found`, the "
                      "object's colour is in the image in any shape; `shape_given_colour`, when it is, the shape is "
                      "right too; `present`, colour and shape; `count`, `relation`: the prompt's count and "
                      "left/right/above/below.")
        doc.table(["check"] + names, [[c] + [_fmt(gens[n]["checks"].get(c, float("nan"))) for n in names]
                                      for c in checks])
    folder = stages["evaluate"].workdir
    doc.image(os.path.join(folder, "comparison.png"), "comparison.png",
              "faithful render, then every generator, same prompts and noise")
    g, gs = scores["grid_prompts"], scores["grid_samples"]
    shown = [f"{i + 1}. {p}" for i, p in enumerate(scores["prompts"][:g])]
    doc.paragraph(f"Rows: a faithful render, then each generator ({', '.join(names)}), sample 0 of each prompt, the "
                  f"judge's score under each image. The score beside each row is the mean over these {g} prompts × 1 "
                  f"sample, not the tables' {count} prompts × {per} samples, so the two differ. Columns: "
                  + "; ".join(shown) + ".")
    shown_runs = ["before", labels[-1]] if labels else ["before"]
    with np.load(os.path.join(folder, "samples.npz")) as samples:
        for label in shown_runs:
            rows = samples[label][:gs, :g].transpose(1, 0, 2, 3, 4)       # [prompt, sample, H, W, 3]
            doc.image(grid_image(rows, scale, labels=scores["prompts"][:g]), f"grid_{label}.png",
                      f"samples of the generator: {label}")
    doc.paragraph(f"Above: {gs} samples (columns) of each of the first {g} prompts (rows, named on the left), from "
                  f"the generator {' and then '.join(shown_runs)}, with the same noise.")


def rm_section(doc: Document, stages: dict, sizes: list[str]) -> None:
    doc.heading("Reward models")
    records = {s: read_metrics(stages[f"rm_{s}"].workdir) for s in sizes}
    sets = sorted({k.split("/")[1] for r in records.values() for step in r.values() for k in step
                   if k.startswith("eval/") and k.endswith("/accuracy")})
    settings = _load_json(os.path.join(stages[f"rm_{sizes[-1]}"].workdir, "export", "reward_config.json")) or {}
    doc.paragraph(f"Paradigm `{settings.get('paradigm', '?')}`, answer format `{settings.get('answer_format', '?')}`, "
                  "each trained from a caption-pretrained VLM of its size. Pairwise accuracy (both orders averaged), "
                  "Brier score and expected calibration error at the last eval.")
    rows = []
    for size in sizes:
        for name in sets:
            rows.append([size, max(records[size]), name] + [_fmt(_last(records[size], f"eval/{name}/{m}"))
                                                            for m in ("accuracy", "brier", "ece")])
    doc.table(["RM", "steps", "eval set", "accuracy", "Brier", "ECE"], rows)
    curves = {f"{size}: {name}": series(records[size], f"eval/{name}/accuracy") for size in sizes for name in sets}
    doc.image(line_plot(curves, "RM accuracy on held-out pairs", "RM training step", "accuracy"),
              "rm_accuracy.png", "RM accuracy during training")
    for size in sizes:
        vlm = stages.get(f"vlm_{size}")
        if vlm is not None:
            vrec = read_metrics(vlm.workdir)
            keys = sorted({k for r in vrec.values() for k in r if k.endswith("/token_accuracy") and k.startswith("eval/")})
            if keys:
                doc.paragraph(f"The {size} VLM: held-out caption token accuracy {value(vrec, keys[0]):.3f} after "
                              f"{max(vrec)} caption-pretraining steps in this run.")


def finetune_section(doc: Document, stages: dict, labels: list[str]) -> None:
    doc.heading("Fine-tuning")
    records = {label: read_metrics(stages[f"finetune_{label}"].workdir) for label in labels}
    ft = stages[f"finetune_{labels[-1]}"].workdir
    bank = _load_json(os.path.join(ft, "bank", "bank.json"))
    if bank:
        s = bank["settings"]
        with np.load(os.path.join(ft, "bank", "bank.npz")) as data:
            refs, wins, chosen = data["images"], data["wins"], data["chosen"]
        top = float(np.take_along_axis(wins, chosen[:, :1], 1).mean())
        doc.paragraph(f"Best-of-{s['num_samples']} reference bank of the {labels[-1]} RM ({s['select']}-{s['top_k']} "
                      f"by round-robin wins) for {len(bank['prompts'])} training prompts; the chosen references won "
                      f"{top:.2f} of {s['num_samples'] - 1} comparisons on average. The first prompts' references:")
        doc.image(grid_image(refs[:16, :1].transpose(1, 0, 2, 3, 4), 3), "references.png", "Best-of-N references")
    else:
        doc.paragraph("The reward models score each image alone (no reference images, no bank).")
    doc.image(line_plot({label: (series(r, "reward/mean")[0], smooth(series(r, "reward/mean")[1]))
                         for label, r in records.items()},
                        "RM reward during fine-tuning (smoothed batch mean)", "fine-tuning step", "P(yes)"),
              "reward.png", "reward curves")
    doc.image(line_plot({label: series(r, "reward/window_std") for label, r in records.items()},
                        "Reward std, sliding window (the paper's reward-variance signal)", "fine-tuning step", "std"),
              "reward_std.png", "reward variance curves")
    key = lambda r: "eval/judge_ema" if series(r, "eval/judge_ema")[0] else "eval/judge"  # noqa: E731
    doc.image(line_plot({label: series(r, key(r)) for label, r in records.items()},
                        "Judge on held-out prompts during fine-tuning (exported parameters)", "fine-tuning step",
                        "judge"), "judge.png", "judge curves")
    rows = []
    for label, r in records.items():
        for metric in ("reward/mean", "reward/window_std", "reward/collapse_frac", "diversity", key(r)):
            s, v = series(r, metric)
            if v:
                rows.append([label, metric, f"{v[0]:.4f} (step {s[0]})", f"{v[-1]:.4f} (step {s[-1]})"])
    doc.table(["run", "metric", "first", "last"], rows)
    if "control" in records:
        doc.paragraph("The control run computes the reward too (it is logged) but its weight in the loss is 0.")


def stages_section(doc: Document, stages: dict, runs: Sequence) -> None:
    doc.heading("Stages")
    rows = []
    for run in runs:
        stage = stages[run.name]
        notes = [f"{run.attempts} attempts"] * (run.attempts > 1) + ["earlier run"] * run.skipped
        rows.append([run.name, stage.title, _clock(run.wall_s) + (f" ({', '.join(notes)})" if notes else ""),
                     _clock(stage.estimate_s), os.path.relpath(stage.workdir, os.path.dirname(doc.folder))])
    budget = sum(stages[r.name].estimate_s for r in runs)
    rows.append(["total", "", _clock(sum(r.wall_s for r in runs)), _clock(budget), ""])
    doc.table(["stage", "what", "wall time (all attempts)", "budget", "folder"], rows)
    from rdance.jobs.stages import BUDGET_MACHINE, cpu_model   # here: rdance.jobs.stages defines the job runners' flags
    doc.paragraph(f"The budgets were timed on {BUDGET_MACHINE}; this report was written on {cpu_model()}. Each "
                  "folder holds the stage's metrics.jsonl, TensorBoard events (`tensorboard --logdir` the workdir), "
                  "checkpoints and export; the stages' whole logs are in logs/.")
