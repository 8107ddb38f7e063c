"""Fine-tune a generator against a frozen generative reward model: ReFL or reward-weighted
flow matching, with a Best-of-N reference bank, EMA, a pretraining anchor and hacking monitors.

    python -m rdance.run.finetune --config=experiments/finetune_smoke.py --workdir=/tmp/ft \\
        --config.generator.path=/tmp/gen_smoke/export --config.reward.path=/tmp/rm_smoke/export

``--config.algo=refl|rwr`` picks the algorithm. Rerunning the same command resumes (the
reference bank in WORKDIR/bank is reused); SIGTERM checkpoints, writes WORKDIR/PREEMPTED and
exits 75 (rdance.core.status). The fine-tuned generator is exported to WORKDIR/export in the
starting generator's layout. See docs/finetune.md.
"""
from __future__ import annotations

from absl import flags, logging

import rdance.world  # noqa: F401  (registers the 'world' generator kind)
from rdance.run import cli

from rdance.core import console, status
from rdance.train.finetune_loop import finetune

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)


def main(argv):
    del argv
    config, workdir = cli.start()
    result = finetune(config, workdir)
    logging.info("done at step %d%s", result.step, " (preempted)" if result.preempted else "")
    status.exit_if_preempted(result.preempted)


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
