"""Optimizer and learning-rate schedule from the config's ``optim`` section."""
from __future__ import annotations

import optax


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = int(cfg.warmup_steps)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps - warmup, 1))
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r}: use 'constant' or 'cosine'")
    if warmup <= 0:
        return decay
    ramp = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        base = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        base = optax.sgd(schedule, momentum=cfg.b1 or None)
    else:
        raise ValueError(f"optim.name={cfg.name!r}: use 'adamw' or 'sgd'")
    chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
    return optax.chain(*chain, base), schedule
