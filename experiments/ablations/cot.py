"""Table 9: chain of thought. The pairwise RM trained on the decision alone, and trained with the
judge's findings as a rationale after the decision (decision first: "yes. reasons"; the reward is
still read from the first answer token, no text is generated during RL); the RM's accuracy and
the judge after RL.

    python -m rdance.run.ablate --workdir=/tmp/ablate --only=cot
"""
from experiments.ablations import base


def get_config(arg: str | None = None):
    c = base.get_config(arg)
    c.name, c.paper = "cot", "Table 9"
    c.title = "Reward model trained without vs with chain-of-thought rationales"
    c.columns = "rm_accuracy,judge"
    c.arms = dict(
        no_cot=dict(label="decision only"),
        # 72 answer tokens hold a decision and its rationale (see experiments/rm_smoke.py).
        cot=dict(label="decision + rationale (CoT)", rm=dict(rm=dict(answer_format="decision_first",
                                                                     max_answer_tokens=72))),
    )
    c.order = "no_cot,cot"
    return c
