"""The whole RewardDance job on the synthetic world, from nothing to a report, in one command.

    python -m rdance.run.demo --workdir=/tmp/demo
    python -m rdance.run.demo --workdir=/tmp/demo_ci --config=experiments/demo.py:ci   # tiny, a few minutes

It starts from the shipped pretrained world generator and VLMs (rdance/world/pretrained; with
``--config.pretrained=false`` the ``generator`` and ``vlm_<size>`` stages train them first). Stages,
each an rdance entrypoint run as a child process in WORKDIR/<stage> (experiments/demo.py says
what each runs and its budget):

- ``pairs``            judge-labelled preference pairs of the generator's samples (rdance.run.make_pairs)
- for each RM size (``small``, ``large``):
  ``rm_<size>``        train the pairwise generative RM from that size's VLM (rdance.run.train_reward)
  ``bank_<size>``      its Best-of-N reference bank (rdance.run.finetune, 0 steps)
  ``finetune_<size>``  ReFL against it (rdance.run.finetune)
- ``finetune_control`` the large run with the reward's weight at 0 (rdance.run.finetune)
- ``evaluate``         the judge on held-out prompts: before, control and every size (rdance.run.judge_generators)
- ``report``           WORKDIR/report/report.md and report.html (rdance.jobs.demo_report)

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

from rdance.jobs import demo_report, stages
from rdance.world import pretrained
from rdance.jobs.stages import (REPO, REUSE, VERBOSE, Runner, Stage, StageError, apply_overrides, flatten, job_lock,
                           load_config, parse_assignments, resolve)
from rdance.train.metrics import format_seconds

# --help lists the shared flags (--config, --workdir, --reuse, ...) with this module's own.
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(stages)

DEFAULT_CONFIG = os.path.join(REPO, "experiments", "demo.py")


def section(config, name: str, extra: dict | None = None) -> tuple[str, dict, float]:
    """A stage section's config file, overrides (``set``, then ``extra``, then ``extra`` given
    here: a size's own) and time estimate."""
    s = config[name]
    overrides = {**flatten(s.set), **parse_assignments(s.extra, f"{name}.extra"), **flatten(extra or {})}
    return s.config, overrides, float(s.estimate_s)


def resolved(spec: str, overrides: dict):
    return apply_overrides(load_config(spec), overrides, spec)


def size_names(config) -> list[str]:
    names = [n for n in config.order.split(",") if n]
    unknown = [n for n in names if n not in config.sizes]
    if unknown or not names:
        raise StageError(f"order={config.order!r}: name one or more of the sizes {', '.join(config.sizes)}")
    return names


def shipped(name: str) -> tuple[str, dict[str, str]]:
    """A shipped world model's folder and its files' digests (for the stages' settings hashes)."""
    try:
        folder = pretrained.folder(name)
    except pretrained.PretrainedError as e:
        raise StageError(str(e)) from None
    return folder, {name: json.dumps(pretrained.manifest()[name]["files"], sort_keys=True)}


def build_stages(config) -> list[Stage]:
    """The demo's stages in order, with their overrides and the folders they read."""
    gen_cfg, gen_set, gen_s = section(config, "generator")
    pairs_cfg, pairs_set, pairs_s = section(config, "pairs")
    rm_cfg, _, _ = section(config, "rm")
    ft_cfg, ft_set, ft_s = section(config, "finetune")
    algo = resolved(ft_cfg, ft_set).algo
    sizes = size_names(config)
    stages, inputs = [], {}
    if config.pretrained:
        generator, inputs = shipped("generator")
    else:
        stages.append(Stage("generator", "pretrain the world generator", "rdance.run.pretrain_generator", gen_cfg,
                            gen_set, marker="export/generator.json", estimate_s=gen_s))
        generator = "{stage:generator}/export"
    stages.append(Stage("pairs", "judge-labelled preference pairs over the generator's samples",
                        "rdance.run.make_pairs", pairs_cfg, pairs_set, flags={"generator": generator},
                        marker="pairs.json", estimate_s=pairs_s, inputs=inputs))
    pairs = resolved(pairs_cfg, pairs_set).pairs
    runs = {}        # label -> the fine-tuning stage's name
    for size in sizes:
        spec = config.sizes[size]
        if config.pretrained:
            vlm, vlm_inputs = shipped(spec.shipped)
        else:
            vlm_cfg, vlm_set, vlm_s = section(config, "vlm", spec.vlm)
            vlm_cfg = f"{vlm_cfg}:{spec.vlm_variant}" if spec.vlm_variant else vlm_cfg
            stages.append(Stage(f"vlm_{size}", f"caption-pretrain the {size} VLM", "rdance.run.train_reward", vlm_cfg,
                                vlm_set, marker="export/reward_config.json", estimate_s=vlm_s))
            vlm, vlm_inputs = f"{{stage:vlm_{size}}}/export", {}
        rm, pairwise = rm_stage(config, size, pairs, vlm, vlm_inputs)
        stages.append(rm)
        models = {"generator.path": generator, "reward.path": f"{{stage:rm_{size}}}/export"}
        # Pairwise RMs score against Best-of-N references; pointwise and regressive ones need no bank.
        copy = {"bank": (f"bank_{size}", "bank")} if pairwise else {}
        if pairwise:
            bank = {**ft_set, **models, "train.steps": 0, "monitor.eval_every": 0, "monitor.grid_every": 0}
            stages.append(Stage(f"bank_{size}", f"build the Best-of-N reference bank with the {size} RM",
                                "rdance.run.finetune", ft_cfg, bank, marker="bank/bank.json",
                                estimate_s=float(config.bank.estimate_s), inputs=inputs))
        stages.append(Stage(f"finetune_{size}", f"fine-tune the generator against the {size} RM "
                            f"({algo})", "rdance.run.finetune", ft_cfg, {**ft_set, **models},
                            copy=copy, marker="export/generator.json", estimate_s=ft_s, inputs=inputs))
        runs[size] = f"finetune_{size}"
    if config.control:   # the last size's run with the reward's weight at 0 (and its bank)
        if algo != "refl":
            raise StageError("the control run sets refl.scale=0, which only ReFL reads: with finetune algo "
                             f"{algo!r} add --config.control=false")
        stages.append(Stage("finetune_control", "control: the same fine-tuning with the reward's weight at 0",
                            "rdance.run.finetune", ft_cfg, {**ft_set, **models, "refl.scale": 0.0}, copy=copy,
                            marker="export/generator.json", estimate_s=ft_s, inputs=inputs))
        runs = {"control": "finetune_control", **runs}
    e = config.evaluate
    generators = [f"before={generator}"] + [f"{label}={{stage:{name}}}/export" for label, name in runs.items()]
    stages.append(Stage(
        "evaluate", "judge every generator on the same held-out prompts and noise",
        "rdance.run.judge_generators", ft_cfg, ft_set, marker="scores.json", estimate_s=float(e.estimate_s),
        flags={"generators": ",".join(generators), "samples_per_prompt": e.samples_per_prompt,
               "grid_prompts": e.grid_prompts, "grid_samples": e.grid_samples, "scale": e.scale}, inputs=inputs))
    return stages


def rm_stage(config, size: str, pairs, vlm: str, vlm_inputs: dict) -> tuple[Stage, bool]:
    """The RM stage of one size, from its VLM ``vlm``, and whether the RM is pairwise."""
    spec = config.sizes[size]
    rm_cfg, rm_set, _ = section(config, "rm", spec.rm)
    rm = dict(rm_set, **{"rm.pretrained": vlm})
    rm_config = resolved(rm_cfg, rm)
    if pairs.eval_prompts + pairs.eval_rendered_pairs > 0:   # the RM's accuracy on the generator's samples
        rm["data.eval_sets"] = ",".join(filter(None, [rm_config.data.eval_sets, "samples={stage:pairs}/eval.jsonl"]))
    train_data = config.rm.train_data
    if train_data not in ("recipe", "pairs", "mix"):
        raise StageError(f"rm.train_data={train_data!r}: use 'recipe' (rm_smoke's data.train), 'pairs' (the "
                         "pairs stage's judged samples) or 'mix' (both, rm.pairs_share of them pairs)")
    if train_data != "recipe":
        if pairs.num_prompts + pairs.rendered_pairs == 0:
            raise StageError(f"rm.train_data={train_data} needs training pairs: set pairs.set.pairs.num_prompts (or "
                             "pairs.set.pairs.rendered_pairs) above 0")
        share = float(config.rm.pairs_share)
        if train_data == "mix" and not 0.0 < share < 1.0:
            raise StageError(f"rm.pairs_share={share}: the share of judged sample pairs in the mix, between 0 and 1")
        rm["data.train"] = ("{stage:pairs}/train.jsonl" if train_data == "pairs" else
                            f"{rm_config.data.train}@{1 - share:g}|{{stage:pairs}}/train.jsonl@{share:g}")
    paradigm = rm_config.rm.paradigm
    return Stage(f"rm_{size}", f"train the {size} {paradigm} reward model", "rdance.run.train_reward", rm_cfg, rm,
                 marker="export/reward_config.json", estimate_s=float(spec.rm_estimate_s),
                 inputs=vlm_inputs), paradigm == "pairwise"


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
    path = demo_report.demo_report(workdir, {s.name: s for s in stages}, runs, dict(config.to_dict()),
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
