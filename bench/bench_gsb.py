"""GSB of the world generator after ReFL against before, judged by a pairwise reward model: the
paper's head-to-head, on the synthetic world's held-out prompts.

    python bench/bench_gsb.py --demo=/tmp/demo          # a finished `python -m rdance.run.demo --workdir=/tmp/demo`
    python bench/bench_gsb.py --before=/tmp/gen/export --after=/tmp/refl/export --rm=/tmp/rm/export

``--demo`` takes the demo's folders: before = WORKDIR/generator/export when the demo trained its
generator, else the shipped one (rdance/world/pretrained/generator); after =
WORKDIR/finetune_SIZE/export (the generator fine-tuned against the ``--size`` RM, default large),
RM = WORKDIR/rm_SIZE/export (that pairwise RM); ``--before/--after/--rm`` override them. The prompts are the world's held-out split of experiments/finetune_smoke.py
(``data.prompt_seed``, ``train_prompts``, ``eval_prompts``: what fine-tuning's eval/judge scores),
written to OUT/prompts.txt; then, as a user would type it,

    python -m rdance.run.evaluate --generators=before=B,after=A --rm=RM --prompt_file=OUT/prompts.txt ...

samples both generators with the same noise and judges every pair in both orders; this script
prints its GSB line as a table (Good + Same + Bad = prompts x samples), then the world's judge's
verdicts on the same pairs beside the RM's. The rest of evaluate's
output (grids, gsb.jsonl with each comparison) is in ``--out_dir``.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", help="A demo workdir: its generator, finetune_SIZE and rm_SIZE stages' exports.")
    parser.add_argument("--size", default="large", help="With --demo: which RM size's run (small or large).")
    parser.add_argument("--before", help="The world generator folder before fine-tuning.")
    parser.add_argument("--after", help="The fine-tuned generator folder (a fine-tuning run's WORKDIR/export).")
    parser.add_argument("--rm", help="A pairwise reward model folder (the judge).")
    parser.add_argument("--out_dir", help="Where evaluate writes (default: a temporary folder).")
    parser.add_argument("--prompt_seed", type=int, default=1)
    parser.add_argument("--train_prompts", type=int, default=128)
    parser.add_argument("--eval_prompts", type=int, default=64, help="Held-out prompts compared.")
    parser.add_argument("--samples_per_prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="Euler steps (finetune_smoke's sampler.num_steps).")
    parser.add_argument("--margin", type=float, default=0.1, help="evaluate's --gsb_margin.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folders = {name: getattr(args, name) or (os.path.join(args.demo, stage, "export") if args.demo else None)
               for name, stage in (("before", "generator"), ("after", f"finetune_{args.size}"),
                                   ("rm", f"rm_{args.size}"))}
    if args.demo and not args.before and not os.path.isdir(folders["before"]):   # the demo's shipped generator
        from rdance.world import pretrained
        folders["before"] = pretrained.folder("generator")
    missing = [f"--{name}" for name, folder in folders.items() if not folder or not os.path.isdir(folder)]
    if missing:
        sys.exit(f"error: no folder for {', '.join(missing)}: give --demo=WORKDIR of a finished demo, or the folders "
                 f"({folders})")

    from rdance.world.captions import world_prompt_split
    _, heldout = world_prompt_split(args.prompt_seed, args.train_prompts, args.eval_prompts)
    out = args.out_dir or tempfile.mkdtemp(prefix="bench_gsb_")
    os.makedirs(out, exist_ok=True)
    prompt_file = os.path.join(out, "prompts.txt")
    with open(prompt_file, "w") as f:
        f.write("".join(scene.prompt + "\n" for scene in heldout))

    command = [sys.executable, "-m", "rdance.run.evaluate",
               f"--generators=before={folders['before']},after={folders['after']}", f"--rm={folders['rm']}",
               f"--prompt_file={prompt_file}", f"--out_dir={out}", f"--samples_per_prompt={args.samples_per_prompt}",
               f"--steps={args.steps}", f"--gsb_margin={args.margin}", f"--seed={args.seed}"]
    print(" ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = next((line for line in done.stdout.splitlines() if line.startswith("GSB of after against before")), None)
    if line is None:
        sys.exit(f"evaluate printed no GSB line:\n{done.stdout}")
    good, same, bad, gsb = re.search(r"Good (\d+), Same (\d+), Bad (\d+), GSB ([-+.\d]+)", line).groups()

    print(f"GSB of the world generator after ReFL against before, judged by {folders['rm']}: "
          f"{len(heldout)} held-out prompts x {args.samples_per_prompt} samples, {args.steps} Euler steps, "
          f"margin {args.margin} (out: {out})\n")
    print("| before | after | comparisons | Good | Same | Bad | GSB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {folders['before']} | {folders['after']} | {int(good) + int(same) + int(bad)} | {good} | {same} | {bad} "
          f"| {gsb} |")
    print_judge_gsb(out, heldout)


def print_judge_gsb(out: str, heldout) -> None:
    """The same pairs judged by the world's judge, which trains nothing: Good where the sample
    after fine-tuning scores higher, Bad where lower. Set beside the RM's verdicts it shows how
    much of the RM's GSB the judge confirms; an RM that prefers the fine-tuned generator's
    style, not its alignment, says Good where the judge ties."""
    import json

    import numpy as np
    from PIL import Image

    from rdance.world.judge import judge

    index = {scene.prompt: i for i, scene in enumerate(heldout)}

    def score(generator: str, row: dict) -> float:
        i = index[row["prompt"]]
        image = Image.open(os.path.join(out, generator, f"{i:05d}", "samples", f"{row['sample']:04d}.png"))
        return judge(np.asarray(image.convert("RGB")), heldout[i]).score

    with open(os.path.join(out, "gsb.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    good = bad = agree = 0
    p_on_ties = []
    for row in rows:
        change = score("after", row) - score("before", row)
        if change == 0:
            p_on_ties.append(row["p_b_wins"])
            continue
        good, bad = good + (change > 0), bad + (change < 0)
        agree += (row["p_b_wins"] > 0.5) == (change > 0)
    same = len(rows) - good - bad
    print("\nThe same pairs judged by the world's judge (Good: the sample after scores higher):\n")
    print("| comparisons | Good | Same | Bad | GSB | RM agrees where the judge differs | RM's P(after wins) where the judge ties |")
    print("|---|---|---|---|---|---|---|")
    ties = f"{np.mean(p_on_ties):.3f} mean, > 0.5 in {np.mean(np.array(p_on_ties) > 0.5):.3f}" if p_on_ties else "-"
    print(f"| {len(rows)} | {good} | {same} | {bad} | {(good - bad) / max(len(rows), 1):+.3f} | "
          f"{agree} of {good + bad} | {ties} |")


if __name__ == "__main__":
    main()
