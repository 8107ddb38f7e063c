"""Does a CLIP score agree with the synthetic world's judge? A world CLIP (rdance.world.clip_model)
is trained for each number of steps given, saved as a transformers CLIPModel folder and loaded
back through the scorer ``rdance.run.evaluate --clip`` uses; then, on judged pairs of renders of
one prompt whose judge scores differ, the fraction it ranks as the judge does (ties count half).

    python bench/bench_clip_world.py --steps=0,100,300 --pairs=500 --heldout_share=0.2

With ``--heldout_share`` above 0 that share of the world's prompts is never a training caption,
and the agreement is given apart on pairs of held-out prompts and of training prompts (the
pairs' images are new renders either way). Chance is 0.5; ``z`` is (agreement - 0.5) /
sqrt(0.25 / N). Steps 0 is the untrained model.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="0,100,300", help="Comma-separated training lengths.")
    parser.add_argument("--pairs", type=int, default=500, help="Judged pairs the agreement is measured on.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout_share", type=float, default=0.0, help="Share of prompts kept out of training.")
    args = parser.parse_args()

    from rdance.reward.clip_score import CLIPScorer
    from rdance.world.clip_model import WorldCLIPConfig, is_heldout, judge_agreement, train

    share = args.heldout_share
    prompt_sets = {"all": None} if share == 0 else {
        "held out": lambda p: is_heldout(p, share), "trained": lambda p: not is_heldout(p, share)}

    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        c = WorldCLIPConfig(steps=steps, batch_size=args.batch_size, patch_size=args.patch_size, width=args.width,
                            projection_dim=args.width, layers=args.layers, heads=args.heads, seed=args.seed,
                            heldout_share=share)
        with tempfile.TemporaryDirectory() as folder:
            started = time.time()
            train(c, folder)
            seconds = time.time() - started
            scorer = CLIPScorer.from_pretrained(folder)
            for name, keep in prompt_sets.items():
                a = judge_agreement(scorer, args.pairs, keep=keep)
                rows.append((steps, seconds, name, a))
                print(f"steps {steps}, {name} prompts: agreement {a.rate:.3f} on {a.pairs} pairs", file=sys.stderr,
                      flush=True)

    print(f"World CLIP (width {args.width}, {args.layers} layers, patch {args.patch_size}, batch {args.batch_size}) "
          f"against the judge on {args.pairs} judged pairs per row (chance 0.5; held-out share {share})\n")
    print("| steps | train s | prompts | pairs | agree | ties | agreement | chance | z |")
    print("|---|---|---|---|---|---|---|---|---|")
    for steps, seconds, name, a in rows:
        print(f"| {steps} | {seconds:.1f} | {name} | {a.pairs} | {a.agree} | {a.ties} | {a.rate:.3f} | 0.5 | "
              f"{(a.rate - 0.5) / a.stderr:+.1f} |")


if __name__ == "__main__":
    main()
