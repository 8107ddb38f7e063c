"""Table 7: the reward model's paradigm. A pointwise regressive RM (scalar head, Bradley-Terry),
a pointwise generative RM (P("yes") of one image, no reference) and a pairwise generative RM
(P("yes": image 2 beats the Best-of-N reference)), each used for ReFL on the same generator;
the judge scores the fine-tuned generators. The pointwise arms fine-tune without a bank.

    python -m rdance.ablate --workdir=/tmp/ablate --only=paradigm
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
    )
    c.order = "regressive,pointwise,pairwise"
    return c
