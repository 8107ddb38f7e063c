"""Inference-time scaling on the synthetic world: the judge's score of the sample a search keeps,
against the generator compute it spent, for no search, Best-of-N and search over paths, with each
verifier given (reward model folders, and the judge itself as the oracle upper bound).

    python bench/bench_search.py --generator=/tmp/demo/generator/export \
        --rm=small=/tmp/ablate/rm_small/export --rm=large=/tmp/ablate/rm_large/export --seeds=3

Prompts are the fine-tuning's held-out world prompts (experiments/finetune_smoke.py's split).
Compute is a multiple of plain sampling (generator function evaluations per prompt / steps):
1x is no search, then 2, 4, 8 and 16x (``--max_units`` caps it).

* **Best-of-N** draws one pool of ``max_units`` samples per prompt and seed; Best-of-N keeps the
  verifier's best of the pool's first N, so N = 2..16 are nested, and **no search** is each
  prompt's first sample, the same noise for every verifier: a gain over no search is paired
  within a seed. A pointwise verifier scores each sample alone, so this is exactly Best-of-N;
  a pairwise RM scores each sample against the prompt's first one (P(it beats sample 0)).
  Its seconds per prompt are the pool's seconds times N / pool size. ``--pool_cache=DIR`` keeps
  the pools, so a later run with other verifiers scores the same samples without drawing them.
* **Search over paths** (rdance.diffusion.search, Ma et al. 2025): n paths from half the steps,
  each branching into m = 2 candidates a round, re-noised 1 step up and denoised 3 steps down
  (5 rounds at 20 steps), so its compute is n (0.5 + 0.75 m) = 2n x; n = 1, 2, 4, 8.

A pointwise RM (``rm.paradigm=pointwise``, P("yes") with no reference, or ``regressive``) is
used as it is; that is the paper's verifier (RewardDance 3.3.2). Each row gives the judge mean
over prompts averaged over seeds, its spread (sample std over seeds), the gain over the same
seed's no search with its spread, the per-seed judge means, and seconds per prompt.
``--out=FILE.json`` also writes every per-seed value and each seed's judge score per prompt.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/

PATHS_M, PATHS_FORWARD, PATHS_BACKWARD = 2, 1, 3


def spread(values) -> float:
    """Sample standard deviation across seeds (0 with one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", required=True, help="A world generator folder.")
    parser.add_argument("--rm", action="append", default=[], help="LABEL=FOLDER of a reward model verifier; repeat.")
    parser.add_argument("--no_oracle", action="store_true", help="Leave out the judge as a verifier.")
    parser.add_argument("--prompts", type=int, default=64, help="Held-out world prompts.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max_units", type=int, default=16,
                        help="The most compute (x plain sampling): the Best-of-N pool size and the largest search.")
    parser.add_argument("--methods", default="best_of_n,paths", help="Which searches: best_of_n, paths or both.")
    parser.add_argument("--pool_cache", default="",
                        help="Folder keeping each seed's Best-of-N pool, so runs with other verifiers reuse it.")
    parser.add_argument("--out", default="", help="Also write every row with its per-seed values to this JSON file.")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if not set(methods) <= {"best_of_n", "paths"} or args.max_units < 1 or args.seeds < 1:
        parser.error(f"--methods={args.methods} --max_units={args.max_units} --seeds={args.seeds}: methods are "
                     "best_of_n and paths (comma-separated); max_units and seeds are at least 1")
    for spec in args.rm:
        if "=" not in spec:
            parser.error(f"--rm={spec}: give LABEL=FOLDER, e.g. --rm=small=/tmp/rm_small/export")

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

    def judge_rows(images, rows):
        return judge_scores(images, [scenes[int(r)] for r in rows])

    verifiers = {} if args.no_oracle else {"judge (oracle)": lambda: judge_rows}
    for spec in args.rm:
        label, _, folder = spec.partition("=")
        rm = RewardModel.from_pretrained(folder)
        verifiers[f"RM {label}"] = (lambda rm=rm: PairwiseAgainstBest(rm.score_pairwise, prompts)) \
            if rm.paradigm == "pairwise" else (lambda rm=rm: pointwise_verifier(rm.score_pointwise, prompts))

    print(f"\n{len(prompts)} held-out world prompts, {args.steps} Euler steps, seeds 0..{args.seeds - 1}, "
          f"generator {args.generator}")
    print("| verifier | method | n | m | compute | judge (mean ± seed std) | gain over no search (± seed std) "
          "| judge per seed | s / prompt |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []

    def emit(label, method, n, m, units, per_prompt, seconds):
        """One row from each seed's judge scores of the kept samples, one per prompt."""
        judged = [float(np.mean(j)) for j in per_prompt]
        gains = [j - float(np.mean(b)) for j, b in zip(judged, plain)]
        rows.append(dict(verifier=label, method=method, n=n, m=m, compute=units, judge=judged, gain=gains,
                         seconds_per_prompt=seconds, judge_per_prompt=[np.asarray(j).tolist() for j in per_prompt]))
        print(f"| {label} | {method} | {n} | {m or '-'} | {units:g}x | {np.mean(judged):.3f} ± {spread(judged):.3f} "
              f"| {np.mean(gains):+.3f} ± {spread(gains):.3f} | {' / '.join(f'{j:.3f}' for j in judged)} "
              f"| {seconds:.3f} |", flush=True)
        if args.out:   # rewritten after every row, so a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump(dict(generator=args.generator, prompts=len(prompts), steps=args.steps, seeds=args.seeds,
                               rms=args.rm, rows=rows), f, indent=1)

    # The Best-of-N pool: max_units samples per prompt and seed (row = prompt * pool + sample).
    pool = args.max_units
    pool_config = SearchConfig(method="best_of_n", n=pool)
    kept = {}                                                   # the pool's images, kept by the recording verifier
    first = np.arange(len(prompts)) * pool                      # each prompt's first sample: no search
    plain, pool_judge, pool_scores, pool_seconds = [], [], {label: [] for label in verifiers}, {}
    for seed in range(args.seeds):
        cached = os.path.join(args.pool_cache, f"pool_prompts{len(prompts)}_steps{args.steps}_n{pool}_seed{seed}.npz")
        if args.pool_cache and os.path.exists(cached):
            with np.load(cached) as saved:
                if str(saved["generator"]) != os.path.abspath(args.generator):
                    sys.exit(f"{cached} holds the pool of generator {saved['generator']}, not {args.generator}: "
                             "give another --pool_cache folder")
                kept.update(images=saved["images"], rows=saved["rows"])
                pool_seconds.setdefault("sampling", []).append(float(saved["seconds_per_prompt"]))
        else:
            start = time.time()

            def record(images, rows):
                kept.update(images=images, rows=rows)
                return np.zeros(len(images))
            searcher(params, gen.frozen, prompts, record, seed=seed, config=pool_config)
            pool_seconds.setdefault("sampling", []).append((time.time() - start) / len(prompts))
            if args.pool_cache:
                os.makedirs(args.pool_cache, exist_ok=True)
                np.savez(cached, images=kept["images"], rows=kept["rows"], generator=os.path.abspath(args.generator),
                         seconds_per_prompt=pool_seconds["sampling"][-1])
        pool_judge.append(judge_rows(kept["images"], kept["rows"]))
        plain.append(pool_judge[-1][first])
        for label, make in verifiers.items():
            start = time.time()
            pool_scores[label].append(np.asarray(make()(kept["images"], kept["rows"]), np.float64))
            pool_seconds.setdefault(label, []).append((time.time() - start) / len(prompts))
    emit("(none)", "none", 1, 0, 1, plain, np.mean(pool_seconds["sampling"]) / pool)
    if "best_of_n" in methods:
        for label in verifiers:
            for n in (2, 4, 8, 16, 32, 64):
                if n > pool:
                    break
                judged = []
                for seed in range(args.seeds):
                    per_prompt = pool_scores[label][seed].reshape(len(prompts), pool)[:, :n]
                    best = np.argmax(per_prompt, axis=1) + np.arange(len(prompts)) * pool
                    judged.append(pool_judge[seed][best])
                seconds = (np.mean(pool_seconds["sampling"]) + np.mean(pool_seconds[label])) * n / pool
                emit(label, "best_of_n", n, 0, n, judged, seconds)

    if "paths" in methods:   # every verifier at one compute before the next: a cut-short run compares them
        for n in (1, 2, 4, 8, 16, 32):
            config = SearchConfig(method="paths", n=n, m=PATHS_M, forward_steps=PATHS_FORWARD,
                                  backward_steps=PATHS_BACKWARD)
            units = config.nfe_per_prompt(args.steps) / args.steps
            if units > args.max_units:
                break
            for label, make in verifiers.items():
                judged, seconds = [], 0.0
                for seed in range(args.seeds):
                    start = time.time()
                    result = searcher(params, gen.frozen, prompts, make(), seed=seed, config=config)
                    judged.append(judge_scores(result.images, scenes))
                    seconds += (time.time() - start) / len(prompts) / args.seeds
                emit(label, "paths", n, PATHS_M, units, judged, seconds)


if __name__ == "__main__":
    main()
