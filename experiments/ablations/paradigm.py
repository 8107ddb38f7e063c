"""Table 7: the reward model's paradigm. A pointwise regressive RM (scalar head, Bradley-Terry),
a pointwise generative RM (P("yes") of one image, no reference) and a pairwise generative RM
(P("yes": image 2 beats the Best-of-N reference)), each used for ReFL on the same generator;
the judge scores the fine-tuned generators. The pointwise arms fine-tune without a bank.

A control arm, ``no_rl``, runs the same fine-tuning with the reward's weight at 0: what is left is
the pretraining anchor (flow matching on renders), which keeps training the starting generator.
The other arms' judge gains count only above this one's.

    python -m rdance.run.ablate --workdir=/tmp/ablate --only=paradigm
"""
from experiments.ablations import base


def get_config(arg: str | None = None):
    c = base.get_config(arg)
    c.name, c.paper = "paradigm", "Table 7"
    c.title = "Reward paradigm: regressive vs pointwise generative vs pairwise generative (with reference)"
    c.columns = "judge,rm_accuracy,late_reward_std"
    c.arms = dict(
        regressive=dict(label="pointwise regressive (no reference)", rm=dict(rm=dict(paradigm="regressive"))),
        pointwise=dict(label="pointwise generative (no reference)", rm=dict(rm=dict(paradigm="pointwise"))),
        pairwise=dict(label="pairwise generative (with reference)"),
        no_rl=dict(label="control: anchor loss only (reward weight 0)", finetune=dict(refl=dict(scale=0.0))),
    )
    c.order = "no_rl,regressive,pointwise,pairwise"
    return c
