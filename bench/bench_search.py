"""Inference-time scaling on the synthetic world: the judge's score of the sample a search keeps,
against the generator compute it spent, for no search, Best-of-N and search over paths, with each
verifier given (reward model folders, and the judge itself as the oracle upper bound).

    python bench/bench_search.py --generator=/tmp/demo/generator/export \
        --rm=small=/tmp/ablate/rm_small/export --rm=large=/tmp/ablate/rm_large/export --seeds=3

Prompts are the fine-tuning's held-out world prompts (experiments/finetune_smoke.py's split);
each row is one (verifier, method, setting), its judge mean over prompts averaged over seeds
(± the spread across seeds), and its compute as a multiple of plain sampling (generator
function evaluations per prompt / steps) and seconds per prompt. Search over paths starts at
half the steps with forward 1 / backward 2, so its compute is n (0.5 + m) x.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/

# (method, n, m): compute 1, 2, 4, 8, 16x for Best-of-N; 1.5, 3, 5, 10x for paths.
SETTINGS = [("none", 1, 1), ("best_of_n", 2, 1), ("best_of_n", 4, 1), ("best_of_n", 8, 1), ("best_of_n", 16, 1),
            ("paths", 1, 1), ("paths", 2, 1), ("paths", 2, 2), ("paths", 4, 2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", required=True, help="A world generator folder.")
    parser.add_argument("--rm", action="append", default=[], help="LABEL=FOLDER of a reward model verifier; repeat.")
    parser.add_argument("--no_oracle", action="store_true", help="Leave out the judge as a verifier.")
    parser.add_argument("--prompts", type=int, default=64, help="Held-out world prompts.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max_units", type=float, default=16, help="Skip settings above this compute.")
    args = parser.parse_args()

    from flax import nnx

    from experiments import finetune_smoke
    from rdance.diffusion.search import PairwiseAgainstBest, SearchConfig, Searcher, pointwise_verifier
    from rdance.reward.api import RewardModel
    from rdance.world.captions import world_prompt_split
    from rdance.world.evaluate import judge_scores
    from rdance.world.generator import WorldGenerator

    data = finetune_smoke.get_config().data
    _, scenes = world_prompt_split(data.prompt_seed, data.train_prompts, data.eval_prompts)
    scenes = scenes[:args.prompts]
    prompts = [s.prompt for s in scenes]
    gen = WorldGenerator.from_pretrained(args.generator)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    params = gen.initial_params(None, None)
    searcher = Searcher(gen, graphdef, args.steps)

    verifiers = {}
    if not args.no_oracle:
        verifiers["judge (oracle)"] = lambda: (lambda images, rows: judge_scores(images, [scenes[int(r)] for r in rows]))
    for spec in args.rm:
        label, _, folder = spec.partition("=")
        rm = RewardModel.from_pretrained(folder)
        verifiers[f"RM {label}"] = (lambda rm=rm: PairwiseAgainstBest(rm.score_pairwise, prompts)) \
            if rm.paradigm == "pairwise" else (lambda rm=rm: pointwise_verifier(rm.score_pointwise, prompts))

    print(f"\n{len(prompts)} held-out world prompts, {args.steps} Euler steps, {args.seeds} seeds, "
          f"generator {args.generator}")
    print("| verifier | method | n | m | compute | judge (mean ± seed spread) | s / prompt |")
    print("|---|---|---|---|---|---|---|")
    for label, make in verifiers.items():
        for method, n, m in SETTINGS:
            config = SearchConfig(method=method, n=n, m=m, forward_steps=1, backward_steps=2)
            if config.nfe_per_prompt(args.steps) / args.steps > args.max_units:
                continue
            judged, units, seconds = [], 0.0, 0.0
            for seed in range(args.seeds):
                start = time.time()
                result = searcher(params, gen.frozen, prompts, make() if method != "none" else None, seed=seed,
                                  config=config)
                judged.append(float(judge_scores(result.images, scenes).mean()))
                units, seconds = result.sampling_units, seconds + (time.time() - start) / len(prompts)
            print(f"| {label} | {method} | {n} | {m if method == 'paths' else '-'} | {units:.1f}x | "
                  f"{np.mean(judged):.3f} ± {np.std(judged):.3f} | {seconds / args.seeds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
