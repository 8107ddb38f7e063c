"""Bounds on the counts and intervals of every config, checked before any work.

A count out of range otherwise shows up late and obscurely: ``train.log_every=0`` as a
ZeroDivisionError after compiling, ``train.steps=-5`` as a run that "succeeds" doing nothing.
Each key is checked where the config has it; the error names the key, its value and the range.
"""
from __future__ import annotations

import ml_collections

# dotted key -> (least value, greatest value or None, what the value means)
BOUNDS = {
    "train.steps": (0, None, "optimizer steps; 0 trains nothing, as the fine-tuning bank stage does"),
    "train.log_every": (1, None, "steps between log lines"),
    "train.checkpoint_every": (1, None, "steps between checkpoints"),
    "train.eval_every": (0, None, "steps between evals; 0 evaluates only at the end"),
    "train.keep_checkpoints": (1, None, "checkpoints kept"),
    "data.global_batch_size": (1, None, "examples per step over all devices"),
    "data.eval_batch_size": (1, None, "examples per eval batch"),
    "data.num_examples": (1, None, "examples in the dataset"),
    "data.train_pairs": (1, None, "training pairs"),
    "data.eval_pairs": (1, None, "pairs per eval set"),
    "data.train_prompts": (1, None, "training prompts"),
    "data.eval_prompts": (1, None, "held-out prompts"),
    "data.samples_per_prompt": (1, None, "samples per prompt in a step"),
    "data.max_image_pixels": (1, None, "pixels of the largest image a JSONL record may hold"),
    "optim.warmup_steps": (0, None, "warm-up steps of the learning rate"),
    "optim.grad_accum_steps": (1, None, "micro-batches per step"),
    "sampler.num_steps": (1, None, "sampler steps"),
    "eval.num_steps": (1, None, "sampler steps of an eval"),
    "eval.prompts": (1, None, "held-out prompts judged"),
    "eval.samples": (1, None, "samples per judged prompt"),
    "eval.chunk": (1, None, "samples per sampler call"),
    "eval.every": (1, None, "steps between prompt-file evals during fine-tuning"),
    "eval.batch_size": (1, None, "prompts per sampling call of a prompt-file eval"),
    "eval.seed": (0, None, "seed of a prompt-file eval's noise"),
    "monitor.eval_every": (0, None, "steps between judge evals; 0 turns them off"),
    "monitor.grid_every": (0, None, "steps between sample grids; 0 turns them off"),
    "monitor.window": (1, None, "steps in the reward window"),
    "monitor.eval_samples": (1, None, "samples per judged prompt"),
    "monitor.eval_chunk": (1, None, "samples per sampler call"),
    "monitor.grid_size": (1, None, "prompts in a sample grid"),
    "monitor.grid_columns": (1, None, "columns of a sample grid"),
    "bank.num_samples": (2, 16, "Best-of-N candidates per prompt"),
    "bank.top_k": (1, 16, "references kept per prompt"),
    "bank.chunk": (1, None, "samples per sampler call"),
    "refl.window": (1, None, "sampler steps ReFL draws its stop step from"),
    "refl.grad_steps": (1, None, "sampler steps the gradient runs back through"),
    "vae.steps": (1, None, "VAE training steps of the world generator"),
    "vae.batch_size": (1, None, "renders per VAE training step"),
    "vae.warmup_steps": (0, None, "warm-up steps of the VAE's learning rate"),
    "vae.log_every": (1, None, "VAE steps between log lines"),
    "vae.eval_prompts": (0, None, "held-out renders the trained VAE reconstructs for the judge; 0: none"),
    "pairs.num_prompts": (0, None, "training prompts; 0 makes no training pairs"),
    "pairs.eval_prompts": (0, None, "held-out prompts; 0 makes no eval pairs"),
    "pairs.samples_per_prompt": (2, None, "samples per prompt (a pair needs two)"),
    "pairs.pairs_per_prompt": (1, None, "pairs per prompt"),
    "pairs.rendered_pairs": (0, None, "rendered training pairs"),
    "pairs.eval_rendered_pairs": (0, None, "rendered eval pairs"),
}
# Chunk sizes of attention 'chunked' (rdance.models.attention) beside each section's ``attention``.
for _section in ("generator", "reward", "rm"):
    BOUNDS[f"{_section}.attention_q_chunk"] = (1, None, "queries per chunk of attention 'chunked'")
    BOUNDS[f"{_section}.attention_k_chunk"] = (1, None, "keys per chunk of attention 'chunked'")


# Keys renamed since configs were written with them: old dotted key -> new dotted key.
RENAMED = {"reward.remat_policy": "reward.remat", "rm.remat_policy": "rm.remat"}
REMAT_NAMES = "none, full, dots, dots_no_batch"  # rdance.models.remat.POLICIES (a test checks they agree)


class ConfigValueError(ValueError):
    pass


def check_bounds(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigValueError for a renamed key the config still holds, or for the first key of
    BOUNDS whose value is out of its range."""
    for old, new in RENAMED.items():
        if _lookup(config, old) is not None:
            raise ConfigValueError(f"config key {old} was renamed to {new} (one of {REMAT_NAMES}); "
                                   "rename it in the config file")
    for key, (least, greatest, meaning) in BOUNDS.items():
        value = _lookup(config, key)
        # A string is another config's key of the same name (fine-tuning's eval.prompts is a file).
        if value is None or isinstance(value, (bool, str)):
            continue
        if not isinstance(value, int) or value < least or (greatest is not None and value > greatest):
            allowed = f">= {least}" if greatest is None else f"from {least} to {greatest}"
            raise ConfigValueError(f"config key {key}={value!r} is out of range: it must be a whole number "
                                   f"{allowed} ({meaning}); set --config.{key}=N with N {allowed}")


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return None
        node = node[part]
    return node


class ConfigKeyError(ValueError):
    pass


def check_override(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raise ConfigKeyError naming ``dotted`` and the keys valid where it went wrong."""
    if dotted in RENAMED:
        raise ConfigKeyError(f"config key '{dotted}' was renamed: pass --config.{RENAMED[dotted]}=NAME instead "
                             f"(NAME one of {REMAT_NAMES})")
    node, walked = config, []
    for part in dotted.split("."):
        name = part.split("[")[0]
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or name not in node:
            where = ".".join(walked) or "the top level"
            valid = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
            raise ConfigKeyError(
                f"unknown config key '{dotted}': '{name}' is not in {where}; valid keys there: "
                f"{', '.join(valid) or '(none: it is a value, not a section)'}")
        node, walked = node[name], walked + [name]
