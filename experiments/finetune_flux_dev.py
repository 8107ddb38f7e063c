"""ReFL of FLUX.1-dev against a generative InternVL3 reward model (the paper's RM-size axis).

    python -m rdance.finetune --config=experiments/finetune_flux_dev.py:8b --workdir=gs://bucket/refl-8b \\
        --config.generator.path=/ckpt/FLUX.1-dev --config.reward.path=/ckpt/rm-8b/export \\
        --config.data.prompt_file=/data/prompts.txt --config.data.eval_prompt_file=/data/eval_prompts.txt \\
        --config.anchor.path=/data/captions.jsonl --distributed

The argument names the RM size (1b, 2b, 8b, 14b, 38b, 78b): an RM trained with
experiments/rm_internvl3.py:SIZE and exported by rdance.train_reward. Defaults follow the paper
where it speaks (Best-of-16 references, top-2; ~8,000 RL iterations; reward-variance window of
1,000) and ImageReward's ReFL elsewhere (the last quarter of the steps, lr 1e-5, grad-norm clip
1, EMA, a pretraining-loss anchor on caption-image pairs). ``anchor.path`` is a JSONL of
``{"prompt": ..., "image": path}``; prompt files hold one prompt per line. ``--config.algo=rwr``
for reward-weighted fine-tuning, ``--config.lora.rank=64`` to train LoRA factors only.

The batch (32 prompts x 2 samples) splits over the mesh's data and fsdp axes: on N chips,
global_batch_size / grad_accum_steps must be a multiple of N / tensor. On more chips, raise the
batch or give the mesh a tensor axis (``--config.mesh.shape="(1,-1,4)"``; FLUX's 24 heads and the
InternVL3 RMs up to 14b split 4 ways, the 6B vision tower of 38b/78b does not).
"""
import ml_collections

from experiments import finetune_smoke

# Bigger reward models take more memory per sample; the batch stays 32 prompts x 2 samples and
# accumulation splits it so each micro-batch fits beside the RM's activations.
ACCUMULATION = {"1b": 1, "2b": 1, "8b": 2, "14b": 2, "38b": 4, "78b": 4}


def get_config(arg: str | None = "8b") -> ml_collections.ConfigDict:
    size = (arg or "8b").lower()
    if size not in ACCUMULATION:
        raise ValueError(f"RM size {size!r}: use one of {sorted(ACCUMULATION)}")
    c = finetune_smoke.get_config()
    c.algo = "refl"
    c.generator.update(dict(kind="flux", path="/path/to/FLUX.1-dev", height=1024, width=1024,
                            guidance_scale=3.5, max_sequence_length=512, dtype="bfloat16", remat="dots_no_batch"))
    c.reward.update(dict(path=f"/path/to/rm-{size}/export", dtype="bfloat16", remat_policy="nothing_saveable"))
    c.sampler.update(dict(num_steps=28, t_sampling="logit_normal"))
    c.data.update(dict(prompt_file="/path/to/prompts.txt", eval_prompt_file="", eval_prompts=16,
                       samples_per_prompt=2, global_batch_size=32))
    c.bank.update(dict(num_samples=16, top_k=2, select="top", chunk=32))
    c.refl.update(dict(window=7, scale=1.0, loss="linear", references="sample"))
    c.anchor.update(dict(weight=1.0, path="/path/to/captions.jsonl"))
    c.ema.update(dict(decay=0.999, warmup=True))
    c.optim.update(dict(learning_rate=1e-5, schedule="constant", warmup_steps=0, weight_decay=0.0,
                        grad_clip_norm=1.0, grad_accum_steps=ACCUMULATION[size]))
    c.monitor.update(dict(window=1000, eval_every=0, eval_params="ema", eval_chunk=16, grid_every=250,
                          grid_size=16, grid_columns=4))
    c.train.update(dict(steps=8000, log_every=10, checkpoint_every=250, keep_checkpoints=3))
    return c
