"""The whole RewardDance job on the synthetic world, from nothing to a report, in one command.

    python -m rdance.run.demo --workdir=/tmp/demo
    python -m rdance.run.demo --workdir=/tmp/demo_ci --config=experiments/demo.py:ci   # ~3 minutes

Stages (each an rdance entrypoint run as a child process in WORKDIR/<stage>; see
experiments/demo.py for what each runs and its budget):

1. ``generator``  pretrain the world generator                  (rdance.run.pretrain_generator)
2. ``pairs``      judge-labelled preference pairs of its samples (rdance.run.make_pairs)
3. ``vlm``        caption-pretrain the small VLM                 (rdance.run.train_reward, caption)
4. ``rm``         train the generative reward model from it      (rdance.run.train_reward)
5. ``bank``       the Best-of-N reference bank (pairwise RMs)    (rdance.run.finetune, 0 steps)
6. ``finetune``   ReFL against the RM                            (rdance.run.finetune)
7. ``evaluate``   the judge on held-out prompts, before vs after (rdance.run.judge_generators)
8. ``report``     WORKDIR/report/report.md and report.html

A finished stage leaves ``DONE.json`` in its folder and a rerun skips it; an interrupted stage
(Ctrl-C, SIGTERM, a crash) resumes from its checkpoints when the same command is run again. A
stage finished with other settings (the demo config or a recipe in experiments/ changed since) is
an error naming the folder, never silently reused. Each stage's whole output is in
WORKDIR/logs/<stage>.log; the console shows its progress lines and the demo's overall ETA. While
it runs the demo holds WORKDIR/JOB.lock: a second demo in the same workdir stops at once.
``--reuse=OTHER_WORKDIR`` links stages already finished there with the same settings.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import flags

from rdance.run import cli

from rdance.core import console

from rdance.jobs import report as reportlib, stages
from rdance.jobs.stages import (REPO, REUSE, VERBOSE, Runner, Stage, StageError, apply_overrides, flatten, job_lock,
                           load_config, parse_assignments, resolve)
from rdance.train.metrics import format_seconds

# --help lists the shared flags (--config, --workdir, --reuse, ...) with this module's own.
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(stages)

DEFAULT_CONFIG = os.path.join(REPO, "experiments", "demo.py")


def section(config, name: str) -> tuple[str, dict, float]:
    """A stage section's config file, overrides (``set``, then ``extra``) and time estimate."""
    s = config[name]
    return s.config, {**flatten(s.set), **parse_assignments(s.extra, f"{name}.extra")}, float(s.estimate_s)


def resolved(spec: str, overrides: dict):
    return apply_overrides(load_config(spec), overrides, spec)


def build_stages(config) -> list[Stage]:
    """The demo's stages in order, with their overrides and the folders they read."""
    gen_cfg, gen_set, gen_s = section(config, "generator")
    pairs_cfg, pairs_set, pairs_s = section(config, "pairs")
    vlm_cfg, vlm_set, vlm_s = section(config, "vlm")
    rm_cfg, rm_set, rm_s = section(config, "rm")
    ft_cfg, ft_set, ft_s = section(config, "finetune")
    stages = [
        Stage("generator", "pretrain the world generator", "rdance.run.pretrain_generator", gen_cfg, gen_set,
              marker="export/generator.json", estimate_s=gen_s),
        Stage("pairs", "judge-labelled preference pairs over the generator's samples", "rdance.run.make_pairs",
              pairs_cfg, pairs_set, flags={"generator": "{stage:generator}/export"}, marker="pairs.json",
              estimate_s=pairs_s),
        Stage("vlm", "caption-pretrain the VLM", "rdance.run.train_reward", vlm_cfg, vlm_set,
              marker="export/reward_config.json", estimate_s=vlm_s),
    ]
    pairs = resolved(pairs_cfg, pairs_set).pairs
    rm = dict(rm_set, **{"rm.pretrained": "{stage:vlm}/export"})
    rm_config = resolved(rm_cfg, rm)
    if pairs.eval_prompts + pairs.eval_rendered_pairs > 0:   # the RM's accuracy on the generator's samples
        rm["data.eval_sets"] = ",".join(filter(None, [rm_config.data.eval_sets, "samples={stage:pairs}/eval.jsonl"]))
    if config.rm.train_data == "pairs":
        if pairs.num_prompts + pairs.rendered_pairs == 0:
            raise StageError("rm.train_data=pairs needs training pairs: set pairs.set.pairs.num_prompts (or "
                             "pairs.set.pairs.rendered_pairs) above 0")
        rm["data.train"] = "{stage:pairs}/train.jsonl"
    elif config.rm.train_data != "recipe":
        raise StageError(f"rm.train_data={config.rm.train_data!r}: use 'recipe' (rm_smoke's data.train) or 'pairs'")
    stages.append(Stage("rm", f"train the {rm_config.rm.paradigm} reward model", "rdance.run.train_reward", rm_cfg, rm,
                        marker="export/reward_config.json", estimate_s=rm_s))
    models = {"generator.path": "{stage:generator}/export", "reward.path": "{stage:rm}/export"}
    pairwise = rm_config.rm.paradigm == "pairwise"
    if pairwise:   # pointwise and regressive RMs score without references: no bank
        bank = {**ft_set, **models, "train.steps": 0, "monitor.eval_every": 0, "monitor.grid_every": 0}
        stages.append(Stage("bank", "build the Best-of-N reference bank", "rdance.run.finetune", ft_cfg, bank,
                            marker="bank/bank.json", estimate_s=float(config.bank.estimate_s)))
    stages.append(Stage("finetune", f"fine-tune the generator ({resolved(ft_cfg, ft_set).algo})", "rdance.run.finetune",
                        ft_cfg, {**ft_set, **models}, copy={"bank": ("bank", "bank")} if pairwise else {},
                        marker="export/generator.json", estimate_s=ft_s))
    e = config.evaluate
    stages.append(Stage(
        "evaluate", "judge the generator before and after on the same held-out prompts and noise",
        "rdance.run.judge_generators", ft_cfg, ft_set, marker="scores.json", estimate_s=float(e.estimate_s),
        flags={"generators": "before={stage:generator}/export,after={stage:finetune}/export",
               "samples_per_prompt": e.samples_per_prompt, "grid_prompts": e.grid_prompts,
               "grid_samples": e.grid_samples, "scale": e.scale}))
    return stages


def check_workdir(workdir: str | None) -> str:
    if not workdir:
        raise StageError("--workdir is required: a local folder for the stages and the report (it is created)")
    if "://" in workdir:
        raise StageError(f"--workdir={workdir}: the demo writes a local report; use a local folder")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise StageError(f"--workdir={workdir} is a file, not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise StageError(f"--workdir={workdir}: cannot create it ({e.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise StageError(f"--workdir={workdir} is not writable")
    return workdir


def run(config, workdir: str, verbose: bool = False, out=None, reuse=()) -> str:
    """Run (or finish) the demo in ``workdir``; returns the report's path."""
    out = out or sys.stdout
    workdir = check_workdir(workdir)
    with job_lock(workdir):
        return _run_locked(config, workdir, verbose, out, reuse)


def _run_locked(config, workdir: str, verbose: bool, out, reuse) -> str:
    started = time.perf_counter()
    stages, _ = resolve(build_stages(config), lambda s: os.path.join(workdir, s.name))
    runner = Runner(stages, os.path.join(workdir, "logs"), compile_cache=os.path.join(workdir, "jax_cache"),
                    verbose=verbose, out=out, extra=1, reuse=reuse)
    print(f"rdance demo ({config.variant}) in {workdir}: {len(stages) + 1} stages", file=out, flush=True)
    runs = runner.run()
    with open(os.path.join(workdir, "stages.json"), "w") as f:
        json.dump([dict(r.__dict__, title=s.title, estimate_s=s.estimate_s) for r, s in zip(runs, stages)], f, indent=1)
    head = f"stage {len(stages) + 1}/{len(stages) + 1} report"
    print(f"{head}: writing {os.path.join(workdir, 'report')}", file=out, flush=True)
    path = reportlib.demo_report(workdir, {s.name: s for s in stages}, runs, dict(config.to_dict()),
                                 with_html=config.report.html)
    print(f"{head}: done; the demo took {format_seconds(time.perf_counter() - started)} this time "
          f"({format_seconds(sum(r.wall_s for r in runs))} of stage time in all)", file=out, flush=True)
    print(f"report: {path}", file=out, flush=True)
    return path


def parse_flags(argv: list[str]) -> list[str]:
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        argv = argv[:1] + [f"--config={DEFAULT_CONFIG}"] + argv[1:]
    return cli.parse_flags(argv)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; flags are --workdir, --config, --config.*, --verbose, "
                 "--reuse")
    try:
        run(cli.CONFIG.value, cli.WORKDIR.value, VERBOSE.value, reuse=REUSE.value)
    except StageError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    console.run(main, flags_parser=parse_flags)
