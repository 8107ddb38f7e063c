"""The paper's ablations at small scale on the synthetic world, 3 seeds each, as tables of mean ± std.

    python -m rdance.run.ablate --workdir=/tmp/ablate                         # all four, 76 min on 2 cores
    python -m rdance.run.ablate --workdir=/tmp/ablate --only=paradigm,cot --seeds=1
    python -m rdance.run.ablate --workdir=/tmp/ablate --plan                  # what would run, and how long

Ablations (one config each in experiments/ablations/, on the shared scale of base.py):

- ``paradigm``   Table 7: regressive vs pointwise generative vs pairwise generative (with reference) RM,
                 beside a control with the reward's weight at 0
- ``rm_size``    Table 2, Figs. 5-6: an RM size ladder -> RM accuracy, late-stage reward std, judge
- ``references`` Table 8: Best-of-16 top-2 vs Best-of-2 top-2 vs Best-of-16 bottom-2 references
- ``cot``        Table 9: RM trained without vs with chain-of-thought rationales

Every arm and seed is a chain of stages (world generator -> VLM -> RM -> ReFL fine-tuning), run as
child processes by rdance.jobs.stages. A stage lives in ``WORKDIR/stages/<kind>-<settings hash>``, so
work identical across arms and ablations (the generator, a VLM size, the pairwise RM of a seed)
runs once, a rerun skips what is finished and resumes what was interrupted, and a changed recipe
makes new stages rather than reusing stale ones. The results go to ``WORKDIR/results.md`` (the
tables), ``WORKDIR/results.json`` (every seed's numbers) and the console. While it runs it holds
``WORKDIR/JOB.lock``: a second run in the same workdir stops at once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import flags

from rdance.run import cli

from rdance.core import console

from rdance.jobs import report as reportlib, stages
from rdance.jobs.stages import (BUDGET_MACHINE, REPO, REUSE, VERBOSE, Runner, Stage, StageError, apply_overrides, flatten,
                           job_lock, load_config, parse_assignments, read_done, resolve)
from rdance.train.metrics import format_seconds

# --help lists the shared flags (--workdir, --reuse, ...) with this module's own.
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(stages)

ABLATIONS = ("paradigm", "rm_size", "references", "cot")
# --workdir is rdance.run.cli's flag (rdance.jobs.stages imports cli for its config-key check).
ONLY = flags.DEFINE_list("only", list(ABLATIONS), "ablations to run (files in experiments/ablations/)")
ARMS = flags.DEFINE_list("arms", [], "run only these arms of the chosen ablations (default: all)")
VARIANT = flags.DEFINE_string("variant", "", "config variant, e.g. 'ci' (tiny models, a few steps)")
SEEDS = flags.DEFINE_integer("seeds", 0, "seeds per arm (0: the config's, 3)")
PLAN = flags.DEFINE_bool("plan", False, "print the stages that would run and the time estimate, run nothing")


@dataclasses.dataclass
class Cell:
    """One arm × seed of an ablation: the names of its stages."""
    ablation: str
    arm: str
    seed: int
    stages: dict[str, str]    # kind ('rm', 'finetune', ...) -> stage name


def load_ablation(name: str, variant: str = ""):
    path = os.path.join(REPO, "experiments", "ablations", f"{name}.py")
    if name == "base" or not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(os.path.dirname(path))
                       if f.endswith(".py") and f not in ("__init__.py", "base.py"))
        raise StageError(f"no ablation {name!r}: experiments/ablations/ has {', '.join(known)}")
    return load_config(f"{path}:{variant}" if variant else path)


def arm_order(config, only_arms=()) -> list[str]:
    names = [a for a in config.order.split(",") if a] if config.order else sorted(config.arms.keys())
    if set(names) != set(config.arms.keys()):
        raise StageError(f"ablation {config.name}: order {names} does not list the arms {sorted(config.arms.keys())}")
    if only_arms:
        unknown = set(only_arms) - set(names)
        if unknown and not set(only_arms) & set(names):
            raise StageError(f"ablation {config.name} has no arm {sorted(unknown)}; its arms: {', '.join(names)}")
        names = [a for a in names if a in only_arms]
    return names


def _section(config, kind: str, arm) -> tuple[str, dict, float]:
    s = config[kind]
    overrides = {**flatten(s.set), **parse_assignments(s.extra, f"{config.name}: {kind}.extra")}
    if arm is not None and kind in arm:
        overrides.update(flatten(arm[kind]))
    return s.config, overrides, float(s.estimate_s)


def _seeded(spec: str, overrides: dict, keys, seed: int, where: str) -> dict:
    """Overrides for seed ``seed``: each key in ``keys`` gets its configured value + seed."""
    config = apply_overrides(load_config(spec), overrides, where)
    values = flatten(config.to_dict())
    return {**overrides, **{key: int(values[key]) + seed for key in keys}}


def cell_stages(config, arm_name: str, seed: int, seed_keys: dict) -> tuple[list[Stage], Cell]:
    """The stages of one arm and seed (names unique to it; identical ones merge in resolve)."""
    arm = config.arms[arm_name]
    tag = f"{config.name}.{arm_name}.s{seed}"
    gen_cfg, gen_set, gen_s = _section(config, "generator", arm)
    vlm_cfg, vlm_set, vlm_s = _section(config, "vlm", arm)
    rm_cfg, rm_set, rm_s = _section(config, "rm", arm)
    ft_cfg, ft_set, ft_s = _section(config, "finetune", arm)
    rm_set = _seeded(rm_cfg, {**rm_set, "rm.pretrained": f"{{stage:vlm.{tag}}}/export"}, seed_keys["rm"], seed,
                     f"{tag} rm")
    models = {"generator.path": f"{{stage:generator.{tag}}}/export", "reward.path": f"{{stage:rm.{tag}}}/export"}
    ft_set = _seeded(ft_cfg, {**ft_set, **models}, seed_keys["finetune"], seed, f"{tag} finetune")
    stages = [
        Stage(f"generator.{tag}", "pretrain the world generator", "rdance.run.pretrain_generator", gen_cfg, gen_set,
              marker="export/generator.json", estimate_s=gen_s),
        Stage(f"vlm.{tag}", "caption-pretrain the VLM", "rdance.run.train_reward", vlm_cfg, vlm_set,
              marker="export/reward_config.json", estimate_s=vlm_s),
        Stage(f"rm.{tag}", "train the reward model", "rdance.run.train_reward", rm_cfg, rm_set,
              marker="export/reward_config.json", estimate_s=rm_s),
        Stage(f"finetune.{tag}", "build the bank and fine-tune with ReFL", "rdance.run.finetune", ft_cfg, ft_set,
              marker="export/generator.json", estimate_s=ft_s),
    ]
    return stages, Cell(config.name, arm_name, seed, {s.name.split(".")[0]: s.name for s in stages})


def plan(names: list[str], variant: str, seeds: int, only_arms=()):
    """(ablation configs, cells, stages in order): ablation by ablation, seed by seed, arm by arm."""
    configs, cells, stages = {}, [], []
    for name in names:
        config = load_ablation(name, variant)
        if config.name != name:
            raise StageError(f"experiments/ablations/{name}.py names itself {config.name!r}")
        configs[name] = config
        n = seeds or config.seeds
        seed_keys = {k: tuple(filter(None, v.split(","))) for k, v in config.seed_keys.items()}
        for seed in range(n):
            for arm in arm_order(config, only_arms):
                cell_list, cell = cell_stages(config, arm, seed, seed_keys)
                stages += cell_list
                cells.append(cell)
    return configs, cells, stages


def collect(configs: dict, cells: list[Cell], lookup: dict) -> dict:
    """Every metric of every cell: {ablation: {arm: {metric: [value per seed]}}} plus the starting
    generator's judge and the stage time each ablation used."""
    out = {}
    for name, config in configs.items():
        columns = [c for c in config.columns.split(",") if c]
        arms: dict[str, dict[str, list[float]]] = {}
        start_judge, used = [], {}
        for cell in (c for c in cells if c.ablation == name):
            values = arms.setdefault(cell.arm, {c: [] for c in columns})
            for column in columns:
                m = config.metrics[column]
                stage = lookup[cell.stages[m.stage]]
                records = reportlib.read_metrics(stage.workdir)
                values[column].append(reportlib.value(records, m.key, m.how, where=f"{stage.workdir}/metrics.jsonl"))
            ft = lookup[cell.stages["finetune"]]
            start_judge.append(reportlib.value(reportlib.read_metrics(ft.workdir), "eval/judge", "first"))
            for kind, stage_name in cell.stages.items():
                stage = lookup[stage_name]
                used[stage.workdir] = float((read_done(stage.workdir) or {}).get("wall_s", 0.0))
        out[name] = {"title": config.title, "paper": config.paper, "columns": columns,
                     "labels": {c: config.metrics[c].label for c in columns},
                     "arm_labels": {a: config.arms[a].get("label", a) for a in arms},
                     "arms": arms, "start_judge": start_judge, "stage_time_s": sum(used.values())}
    return out


def tables(results: dict) -> str:
    """The results as Markdown: one table per ablation, mean ± std over seeds."""
    parts = []
    for name, r in results.items():
        seeds = max((len(v) for arm in r["arms"].values() for v in arm.values()), default=0)
        parts.append(f"### {r['title']} ({r['paper']})")
        header = ["arm"] + [f"{r['labels'][c]}" for c in r["columns"]]
        rows = [[r["arm_labels"][arm]] + [reportlib.format_mean_std(values[c]) for c in r["columns"]]
                for arm, values in r["arms"].items()]
        parts.append(reportlib.markdown_table(header, rows))
        start = reportlib.mean_std(r["start_judge"])[0]
        parts.append(f"Mean ± std over {seeds} seed(s). Judge of the starting generator (before RL): {start:.3f}. "
                     f"Stage time used: {format_seconds(r['stage_time_s'])} (a stage shared with another "
                     f"ablation counts in both).")
    return "\n\n".join(parts) + "\n"


def run(workdir: str, names: list[str], variant: str = "", seeds: int = 0, only_arms=(), dry_run: bool = False,
        verbose: bool = False, out=None, reuse=()) -> dict | None:
    out = out or sys.stdout
    if not workdir:
        raise StageError("--workdir is required: a local folder for the stages and the results")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise StageError(f"--workdir={workdir} is a file, not a folder")
    unknown = [n for n in names if n not in ABLATIONS and not os.path.isfile(
        os.path.join(REPO, "experiments", "ablations", f"{n}.py"))]
    if unknown:
        raise StageError(f"--only: no ablation {unknown}; choose from {', '.join(ABLATIONS)}")
    configs, cells, stages = plan(names, variant, seeds, only_arms)
    distinct, lookup = resolve(stages, lambda s: os.path.join(workdir, "stages", f"{s.name.split('.')[0]}-{s.hash}"))
    todo = [s for s in distinct if read_done(s.workdir) is None]
    estimate = format_seconds(sum(s.estimate_s for s in todo))
    print(f"rdance ablations {', '.join(names)}{' (' + variant + ')' if variant else ''}: {len(cells)} arm-seeds, "
          f"{len(distinct)} distinct stages, {len(todo)} to run (estimate {estimate} on {BUDGET_MACHINE})", file=out,
          flush=True)
    if dry_run:
        for s in distinct:
            state = "done" if read_done(s.workdir) else f"~{format_seconds(s.estimate_s)}"
            print(f"  {os.path.basename(s.workdir):32s} {state:>9s}  {s.name}", file=out)
        return None
    os.makedirs(workdir, exist_ok=True)
    with job_lock(workdir):
        return _run_locked(workdir, configs, cells, distinct, lookup, verbose, out, reuse)


def _run_locked(workdir: str, configs: dict, cells: list[Cell], distinct: list[Stage], lookup: dict, verbose: bool,
                out, reuse) -> dict:
    """Run the stages, then write the tables: the part of ``run`` that holds the workdir's lock."""
    started = time.perf_counter()
    Runner(distinct, os.path.join(workdir, "logs"), compile_cache=os.path.join(workdir, "jax_cache"),
           verbose=verbose, out=out, reuse=reuse).run()
    results = collect(configs, cells, lookup)
    text = tables(results)
    # Earlier runs' results for other ablations stay in results.json; the tables cover them all.
    path = os.path.join(workdir, "results.json")
    saved = json.load(open(path)) if os.path.isfile(path) else {}
    saved.update(results)
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("## Ablations at small scale (rdance.run.ablate)\n\n" + tables(saved))
    print("\n" + text, file=out)
    print(f"ablations done in {format_seconds(time.perf_counter() - started)}; tables in "
          f"{os.path.join(workdir, 'results.md')}", file=out, flush=True)
    return results


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    try:
        run(cli.WORKDIR.value, ONLY.value, VARIANT.value, SEEDS.value, ARMS.value, PLAN.value, VERBOSE.value,
            reuse=REUSE.value)
    except StageError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    console.run(main)
