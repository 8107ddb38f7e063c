"""The small scale every ablation shares (``python -m rdance.run.ablate``): the stages, their budgets,
the seeds, and the metrics an ablation can tabulate. Not run on its own.

Each ablation file (paradigm.py, rm_size.py, references.py, cot.py) starts from this config and
adds its arms: per-stage overrides on top of these. Stages identical across arms and ablations
(the generator, the VLM of one size, the pairwise RM of one seed, ...) have the same settings
hash, so ``rdance.run.ablate`` runs each once and reuses it.

As in experiments/demo.py the recipes come from the smoke configs; ``set`` sections override
steps, cadence, sizes and the RM's learning rate. The RM here is the ladder's middle size: the
smoke RM's widths halved (see ``rm_size``), so that 3 seeds of every arm fit the suite's 90
minutes. Its learning rate follows the width (``rm_learning_rate``). Calibration (2 idle cores):
with 300 VLM steps (caption token accuracy 0.63) the middle RM stayed at chance (0.47-0.52 after
240 steps, every paradigm), so the VLM gets 1200 steps (token accuracy 0.80); from it the middle
RM reaches 0.64 in 240 steps at lr 1e-3 (0.68 in 480 steps at 3e-4, too slow for 18 RMs).
Variant ``ci``: tiny models and a few steps (plumbing only).
"""
import ml_collections

from experiments import rm_smoke
from experiments.demo import FAST_COMPILE, TINY_GENERATOR, TINY_VAE_STAGE, TINY_VLM, stage

# What an ablation can tabulate: (label, stage, metric in that stage's metrics.jsonl, which value).
METRICS = {
    "rm_accuracy": dict(label="RM accuracy", stage="rm", key="eval/in_domain/accuracy", how="last"),
    "late_reward_std": dict(label="late reward std", stage="finetune", key="reward/window_std", how="last"),
    "reward": dict(label="final reward", stage="finetune", key="reward/mean", how="late_mean"),
    "judge": dict(label="judge after RL", stage="finetune", key="eval/judge_ema", how="last"),
}


# The shared RM: the smoke RM's widths x 0.5 and depths x 0.67 (rm_size's "medium").
MIDDLE_WIDTH, MIDDLE_DEPTH = 0.5, 0.67


def rm_size(width: float, depth: float) -> dict:
    """RM (VLM) sizes: the smoke RM's widths times ``width`` and its depths times ``depth``
    (rounded, at least one layer; widths stay multiples of the heads)."""
    m = rm_smoke.get_config().model

    def scaled(hidden: int, heads: int) -> int:
        return max(heads, round(hidden * width / heads) * heads)
    return dict(vision_hidden=scaled(m.vision_hidden, m.vision_heads), text_hidden=scaled(m.text_hidden, m.text_heads),
                vision_layers=max(1, round(m.vision_layers * depth)), text_layers=max(1, round(m.text_layers * depth)))


def rm_learning_rate(width: float) -> float:
    """The RM's learning rate at ``width`` times the smoke RM's widths: the smoke recipe's 3e-4
    (best at full width, experiments/rm_smoke.py) scaled by 1/width, as narrower models take
    larger steps."""
    return rm_smoke.get_config().optim.learning_rate / width


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "full"
    if variant not in ("full", "ci"):
        raise ValueError(f"ablation variant {variant!r}: use full (the default) or ci")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.name, c.title, c.paper = "", "", ""
    c.seeds = 3
    # What makes seed s: each listed key of a stage gets its configured value + s.
    c.seed_keys = dict(rm="seed,data.seed", finetune="seed,data.seed")
    c.columns = "judge"
    c.metrics = METRICS
    c.generator = stage("experiments/gen_smoke.py", 180,
                        train=dict(steps=400, eval_every=100, checkpoint_every=100, log_every=25))
    c.vlm = stage("experiments/vlm_smoke.py", 200, model=rm_size(MIDDLE_WIDTH, MIDDLE_DEPTH),
                  train=dict(steps=1200, eval_every=300, checkpoint_every=600))
    c.rm = stage("experiments/rm_smoke.py", 90, train=dict(steps=240, eval_every=80, checkpoint_every=80),
                 optim=dict(learning_rate=rm_learning_rate(MIDDLE_WIDTH)),
                 # Uniform near misses, as the tables were measured: 240 steps are too few for
                 # the smoke recipe's shape-heavy mix to pay off (see experiments/rm_smoke.py).
                 data=dict(eval_sets="in_domain=world", mistake_weights=dict(shape=1.0)))
    # Bank: Best-of-16, top-2 (the paper's best setting, Table 8), for every pairwise arm.
    c.finetune = stage("experiments/finetune_smoke.py", 75,
                       data=dict(train_prompts=48, eval_prompts=64), bank=dict(num_samples=16, top_k=2),
                       monitor=dict(window=16, eval_every=24, grid_every=0),
                       train=dict(steps=48, checkpoint_every=24))
    c.arms = ml_collections.ConfigDict()   # name -> label and overrides per stage (vlm, rm, finetune)
    c.order = ""                           # the arms' order in the table ("" = by name)
    if variant == "ci":
        c.seeds = 1
        # The demo's CI generator stage exactly (its VAE stage too), so the ablation reuses it.
        c.generator.set = dict(model=TINY_GENERATOR, vae=TINY_VAE_STAGE, data=dict(global_batch_size=16),
                               optim=dict(warmup_steps=2), eval=dict(prompts=8, samples=1, num_steps=4, chunk=8),
                               train=dict(steps=40, log_every=10, eval_every=40, checkpoint_every=20))
        c.generator.estimate_s = 25
        c.vlm.set = dict(model=TINY_VLM, data=dict(global_batch_size=8, eval_pairs=16, eval_batch_size=16),
                         optim=dict(warmup_steps=2), train=dict(steps=10, log_every=5, eval_every=10,
                                                                checkpoint_every=10))
        c.vlm.estimate_s = 25
        c.rm.set = dict(data=dict(global_batch_size=8, eval_pairs=16, eval_batch_size=16, eval_sets="in_domain=world"),
                        optim=dict(warmup_steps=2, learning_rate=rm_learning_rate(MIDDLE_WIDTH)),
                        train=dict(steps=10, log_every=5, eval_every=10, checkpoint_every=10))
        c.rm.estimate_s = 30
        c.finetune.set = dict(
            sampler=dict(num_steps=4), refl=dict(window=2),
            data=dict(train_prompts=16, eval_prompts=8, global_batch_size=8, samples_per_prompt=2),
            bank=dict(num_samples=4, top_k=2, chunk=16),
            monitor=dict(window=4, eval_every=2, eval_samples=1, grid_every=0, eval_chunk=8),
            optim=dict(learning_rate=1e-3), train=dict(steps=4, log_every=1, checkpoint_every=2,
                                                       compiler_options=FAST_COMPILE))
        c.finetune.estimate_s = 40
    return c
