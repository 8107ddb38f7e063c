"""Table 8: the quality of the Best-of-N references. Fine-tuning with the pairwise RM against the
top 2 of 16 samples per prompt, the top 2 of 2, and the bottom 2 of 16 (ranked by round-robin
wins under the RM); the judge scores the fine-tuned generators.

    python -m rdance.run.ablate --workdir=/tmp/ablate --only=references
"""
from experiments.ablations import base


def get_config(arg: str | None = None):
    c = base.get_config(arg)
    c.name, c.paper = "references", "Table 8"
    c.title = "Best-of-N references: Best-of-16 top-2 vs Best-of-2 top-2 vs Best-of-16 bottom-2"
    c.columns = "judge,reward,late_reward_std"
    n = 4 if c.variant == "ci" else 16
    c.arms = dict(
        best_top2=dict(label=f"Best-of-{n} top-2", finetune=dict(bank=dict(num_samples=n, top_k=2, select="top"))),
        best_of_2=dict(label="Best-of-2 top-2", finetune=dict(bank=dict(num_samples=2, top_k=2, select="top"))),
        best_bottom2=dict(label=f"Best-of-{n} bottom-2",
                          finetune=dict(bank=dict(num_samples=n, top_k=2, select="bottom"))),
    )
    c.order = "best_top2,best_of_2,best_bottom2"
    return c
