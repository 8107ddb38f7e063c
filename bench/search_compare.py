"""Does a larger reward model's search gain more? Reads the ``--out`` files of bench_search.py runs
over the same pools (e.g. one run with the oracle, one with the RMs) and prints one markdown table:
per method and compute, each verifier's gain over no search and the difference of two RMs' gains.

    python bench/search_compare.py --runs=/tmp/oracle.json,/tmp/rms.json --rms=small,large

The difference (second RM minus first) is given twice: its mean ± sample std over seeds, and
± the standard error over prompts (each prompt's difference averaged over seeds, then the std
over prompts / sqrt(prompts)): prompts are the unit the two searches share. ``prompts for 2 SE``
is how many prompts would put the observed difference 2 standard errors from zero.
"""
import argparse
import json
import math

import numpy as np


def spread(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def load_rows(paths: list[str]) -> list[dict]:
    """The rows of every run; runs must share their no-search row (the same pools)."""
    rows, plain = [], None
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        for row in run["rows"]:
            if row["method"] == "none":
                if plain is not None and row["judge_per_prompt"] != plain["judge_per_prompt"]:
                    raise SystemExit(f"{path}: its no-search samples differ from the first run's: compare runs of "
                                     "the same generator, prompts, steps, seeds and --pool_cache")
                if plain is None:
                    plain = row
                    rows.append(row)
                continue
            rows.append(row)
    if plain is None:
        raise SystemExit(f"{', '.join(paths)}: no no-search row: give bench_search.py --out files")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Comma-separated bench_search.py --out files.")
    parser.add_argument("--rms", required=True, help="SMALL,LARGE: the two RM labels to compare (LARGE - SMALL).")
    args = parser.parse_args()
    small, _, large = args.rms.partition(",")
    rows = load_rows(args.runs.split(","))
    labels = sorted({r["verifier"] for r in rows if r["method"] != "none"})
    for label in (small, large):
        if f"RM {label}" not in labels:
            raise SystemExit(f"--rms={args.rms}: no rows of RM {label!r}; the runs hold {', '.join(labels)}")
    by_key = {(r["method"], r["compute"], r["verifier"]): r for r in rows}
    print(f"| method | compute | {' | '.join(f'gain, {v}' for v in labels)} | {large} - {small} (± seed std) "
          f"| per seed | ± SE over prompts | prompts for 2 SE |")
    print("|---|---|" + "---|" * (len(labels) + 4))
    for method, units in sorted({(r["method"], r["compute"]) for r in rows if r["method"] != "none"}):
        cells = []
        for v in labels:
            row = by_key.get((method, units, v))
            cells.append(f"{np.mean(row['gain']):+.3f} ± {spread(row['gain']):.3f}" if row else "-")
        a, b = by_key.get((method, units, f"RM {small}")), by_key.get((method, units, f"RM {large}"))
        if a and b:
            per_seed = [y - x for x, y in zip(a["judge"], b["judge"])]
            per_prompt = np.mean(np.asarray(b["judge_per_prompt"]) - np.asarray(a["judge_per_prompt"]), axis=0)
            se = spread(per_prompt) / math.sqrt(len(per_prompt))
            needed = math.ceil(len(per_prompt) * (2 * se / abs(np.mean(per_prompt))) ** 2) \
                if np.mean(per_prompt) != 0 else "-"
            cells += [f"{np.mean(per_seed):+.3f} ± {spread(per_seed):.3f}", " / ".join(f"{d:+.3f}" for d in per_seed),
                      f"± {se:.3f}", str(needed)]
        else:
            cells += ["-"] * 4
        print(f"| {method} | {units:g}x | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
