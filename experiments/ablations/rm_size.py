"""Table 2 and Figs. 5-6: reward-model size. Three RMs whose VLMs are the smoke RM's widths times
1/4, 1/2 and 1 and depths times 1/3, 2/3 and 1 (VLM caption pretraining and RM training at each
size), each used for ReFL: the RM's accuracy on held-out pairs, the late-stage reward std (the
sliding window's std at the end, the paper's reward-variance signal) and the judge after RL.

    python -m rdance.run.ablate --workdir=/tmp/ablate --only=rm_size
"""
from experiments.ablations import base

SIZES = {"small": (0.25, 0.34), "medium": (base.MIDDLE_WIDTH, base.MIDDLE_DEPTH), "large": (1.0, 1.0)}


def describe(sizes: dict) -> str:
    return (f"vision {sizes['vision_hidden']}x{sizes['vision_layers']}, "
            f"text {sizes['text_hidden']}x{sizes['text_layers']}")


def get_config(arg: str | None = None):
    c = base.get_config(arg)
    c.name, c.paper = "rm_size", "Table 2, Figs. 5-6"
    c.title = "Reward-model size: RM accuracy, late-stage reward std, judge after RL"
    c.columns = "rm_accuracy,late_reward_std,judge"
    arms = {}
    for name, (width, depth) in SIZES.items():
        sizes = base.rm_size(width, depth)
        if c.variant == "ci":   # tiny VLMs: text width 16, 32, 48 over one layer
            sizes = dict(base.TINY_VLM, text_hidden=16 * (1 + list(SIZES).index(name)))
        arms[name] = dict(label=f"{name} ({describe(sizes)})", vlm=dict(model=sizes),
                          rm=dict(optim=dict(learning_rate=base.rm_learning_rate(width))))
    c.arms = arms
    c.order = "small,medium,large"
    return c
