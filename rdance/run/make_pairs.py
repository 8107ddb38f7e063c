"""Preference data over a trained world generator's own samples, labelled by the programmatic judge.

    python -m rdance.run.make_pairs --config=experiments/gen_smoke.py --workdir=/tmp/pairs \\
        --generator=/tmp/gen_smoke/export --config.pairs.num_prompts=1000

The config's ``pairs`` section says how many (``num_prompts`` / ``eval_prompts`` random world
prompts, ``samples_per_prompt`` samples each, ``pairs_per_prompt`` pairs of samples the judge
scores differently, ``rendered_pairs`` / ``eval_rendered_pairs`` rendered pairs mixed in) and
``eval.num_steps`` / ``eval.chunk`` how to sample: the same as ``rdance.run.pretrain_generator``
writes at the end of pretraining, for a generator folder that already exists. Writes
``WORKDIR/{train,eval}.jsonl`` next to their PNGs (a split with nothing in it is not written),
which ``rdance.run.train_reward --config.data.train=WORKDIR/train.jsonl`` reads, and
``WORKDIR/pairs.json`` with the counts once both are complete.
"""
from __future__ import annotations

import json
import os
import sys

import jax
from absl import flags, logging

from rdance.run import cli

from rdance.core import console, sharding
from rdance.world.generator import open_folder_sampler
from rdance.world.sampled_pairs import write_pairs

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)

GENERATOR = flags.DEFINE_string("generator", None, "a world generator folder (pretrain_generator's WORKDIR/export)")


def main(argv):
    del argv
    config, workdir = cli.start()
    if not GENERATOR.value or not os.path.isfile(os.path.join(GENERATOR.value, "generator.json")):
        sys.exit(f"error: --generator={GENERATOR.value}: not a world generator folder (no generator.json); "
                 "python -m rdance.run.pretrain_generator writes one to WORKDIR/export")
    p = config.pairs
    mesh = sharding.make_mesh((1, -1, 1), jax.local_devices())   # sampling only: this host's devices
    gen, sampler, params = open_folder_sampler(GENERATOR.value, mesh, config.mesh.rules, config.eval.num_steps,
                                          config.eval.chunk, p.seed)
    counts = {}
    for split, prompts, rendered, seed in (("train", p.num_prompts, p.rendered_pairs, p.seed),
                                           ("eval", p.eval_prompts, p.eval_rendered_pairs, p.seed + 10_000)):
        if prompts + rendered == 0:
            continue
        path = os.path.join(workdir, f"{split}.jsonl")
        counts[split] = write_pairs(path, sampler, params, gen, num_prompts=prompts,
                                    samples_per_prompt=p.samples_per_prompt, pairs_per_prompt=p.pairs_per_prompt,
                                    rendered_pairs=rendered, seed=seed)
    if not counts:
        sys.exit("error: nothing to write: set pairs.num_prompts or pairs.eval_prompts (or the rendered counts)")
    with open(os.path.join(workdir, "pairs.json"), "w") as f:
        json.dump({"generator": GENERATOR.value, "counts": counts}, f, indent=1)
    logging.info("wrote %s", os.path.join(workdir, "pairs.json"))


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
