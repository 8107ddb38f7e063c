"""How the motion judge scores faithful clips and each kind of near miss: mean score and its three
parts over the prompts of one motion prompt set (a still prompt has no 'static' near miss, and
shuffling a still clip changes nothing, so those rows hold the moving prompts only).

    python bench/bench_motion_judge.py --prompts=200 --sizes=32,64 --frames=8

A judge that measures motion must give faithful clips ~1 and every mistake far less; 'shuffled'
is a faithful clip with its frames in a random order: every frame is right, the motion is not.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--sizes", default="32,64", help="Comma-separated image sizes.")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from rdance.world.clip_pairs import CLIP_MISTAKES, possible_clip_mistakes, render_clip_variant
    from rdance.world.motion import motion_prompt_set
    from rdance.world.motion_judge import judge_clip

    print("| size | clip | clips | score | per_frame | direction | persistence |")
    print("|---|---|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        start, verdicts = time.time(), {m: [] for m in ("faithful", *CLIP_MISTAKES, "shuffled")}
        for i, mscene in enumerate(motion_prompt_set(args.seed, args.prompts)):
            for mistake in (None, *possible_clip_mistakes(mscene)):
                clip = render_clip_variant(mscene, mistake, size, args.frames, np.random.default_rng(i))
                verdicts[mistake or "faithful"].append(judge_clip(clip, mscene))
                if mistake is None and mscene.motion != "still":
                    order = np.random.default_rng(i).permutation(args.frames)
                    verdicts["shuffled"].append(judge_clip(clip[order], mscene))
        for name, judged in verdicts.items():
            parts = [np.mean([j.parts()[k] for j in judged]) for k in ("per_frame", "direction", "persistence")]
            print(f"| {size} | {name} | {len(judged)} | {np.mean([j.score for j in judged]):.3f} | "
                  + " | ".join(f"{p:.3f}" for p in parts) + " |")
        print(f"(size {size}: {time.time() - start:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
