"""ReFL of FLUX.1-dev against a generative InternVL3 reward model (the paper's RM-size axis).

    python -m rdance.run.finetune --config=experiments/finetune_flux_dev.py:8b --workdir=gs://bucket/refl-8b \\
        --config.generator.path=/ckpt/FLUX.1-dev --config.reward.path=/ckpt/rm-8b/export \\
        --config.data.prompt_file=/data/prompts.txt --config.data.eval_prompt_file=/data/eval_prompts.txt \\
        --config.anchor.path=/data/captions.jsonl --distributed

The argument names the RM size (1b, 2b, 8b, 14b, 38b, 78b): an RM trained with
experiments/rm_internvl3.py:SIZE and exported by rdance.run.train_reward. Defaults follow the paper
where it speaks (Best-of-16 references, top-2; ~8,000 RL iterations; reward-variance window of
1,000) and ImageReward's ReFL elsewhere (the last quarter of the steps, lr 1e-5, grad-norm clip
1, EMA, a pretraining-loss anchor on caption-image pairs). ``anchor.path`` is a JSONL of
``{"prompt": ..., "image": path}``; prompt files hold one prompt per line. ``--config.algo=rwr``
for reward-weighted fine-tuning, ``--config.lora.rank=64`` to train LoRA factors only.

The batch (32 prompts x 2 samples) splits over the mesh's data and fsdp axes: on N chips,
global_batch_size / grad_accum_steps must be a multiple of N / tensor. On more chips, raise the
batch or give the mesh a tensor axis (``--config.mesh.shape="(1,-1,2)"``: FLUX's 24 heads and the
InternVL3 RMs up to 14b split 2 ways; their 151,674-row vocabulary does not split 4 ways, and the
6B vision tower of 38b/78b (25 heads) not at all).

Will it fit? Compile the ReFL step for a TPU slice on a CPU, from shapes only (no checkpoints:
``generator.architecture`` and ``reward.architecture`` hold the config files of FLUX.1-dev and of
the InternVL3 RM, used when the paths are not folders); see docs/finetune.md. With the 8b RM at
1024x1024 the step fits 16 v5p chips, one prompt (two samples) per chip and micro-batch (47.8
GiB of 95; 97.6 GiB with generator.remat=dots_no_batch):

    python -m rdance.run.fit_check --entry=rdance.run.finetune --config=experiments/finetune_flux_dev.py:8b \
        --topology=v5p:2x2x4
"""
import ml_collections

from experiments import finetune_smoke, rm_internvl3

# FLUX.1-dev's component configs (black-forest-labs/FLUX.1-dev: transformer/, vae/, scheduler/,
# text_encoder/ = CLIP ViT-L/14 text, text_encoder_2/ = T5 v1.1 XXL encoder), as config.json has them.
FLUX_DEV = dict(
    transformer=dict(_class_name="FluxTransformer2DModel", patch_size=1, in_channels=64, num_layers=19,
                     num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                     joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                     axes_dims_rope=(16, 56, 56)),
    vae=dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=16,
             block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             act_fn="silu", sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, force_upcast=True,
             use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True),
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0,
                   use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                   max_image_seq_len=4096),
    text_encoder=dict(model_type="clip_text_model", vocab_size=49408, hidden_size=768, intermediate_size=3072,
                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=2),
    text_encoder_2=dict(model_type="t5", vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                        num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu"),
)
# What an RM folder exported by rdance.run.train_reward holds besides weights and tokenizer.
RM_SETTINGS = ("paradigm", "answer_format", "criteria", "normalise", "max_prompt_tokens", "max_answer_tokens",
               "max_tiles")


def rm_architecture(size: str) -> dict:
    """config.json and reward_config.json of the RM experiments/rm_internvl3.py:SIZE exports."""
    rm = rm_internvl3.get_config(size).rm
    return dict(config=rm_internvl3.architecture(size), reward_config={k: rm[k] for k in RM_SETTINGS})

# Bigger reward models take more memory per sample; the batch stays 32 prompts x 2 samples and
# accumulation splits it so each micro-batch fits beside the RM's activations.
ACCUMULATION = {"1b": 1, "2b": 1, "8b": 2, "14b": 2, "38b": 4, "78b": 4}


def get_config(arg: str | None = "8b") -> ml_collections.ConfigDict:
    size = (arg or "8b").lower()
    if size not in ACCUMULATION:
        raise ValueError(f"RM size {size!r}: use one of {sorted(ACCUMULATION)}")
    c = finetune_smoke.get_config()
    c.algo = "refl"
    # remat=full: each FLUX block keeps only its input for the backward; saving its matmul
    # outputs (dots_no_batch) costs ~20 GiB more per sample at 1024x1024 and no longer fits 16 chips.
    c.generator.update(dict(kind="flux", path="/path/to/FLUX.1-dev", height=1024, width=1024,
                            guidance_scale=3.5, max_sequence_length=512, dtype="bfloat16", remat="full",
                            architecture=FLUX_DEV))
    c.reward.update(dict(path=f"/path/to/rm-{size}/export", dtype="bfloat16", remat="full",
                         architecture=rm_architecture(size)))
    c.sampler.update(dict(num_steps=28, t_sampling="logit_normal"))
    c.data.update(dict(prompt_file="/path/to/prompts.txt", eval_prompt_file="", eval_prompts=16,
                       samples_per_prompt=2, global_batch_size=32))
    c.bank.update(dict(num_samples=16, top_k=2, select="top", chunk=32))
    c.refl.update(dict(window=7, scale=1.0, loss="linear", references="sample", shift=0))
    c.anchor.update(dict(weight=1.0, path="/path/to/captions.jsonl"))
    c.ema.update(dict(decay=0.999, warmup=True))
    c.optim.update(dict(learning_rate=1e-5, schedule="constant", warmup_steps=0, weight_decay=0.0,
                        grad_clip_norm=1.0, grad_accum_steps=ACCUMULATION[size]))
    c.monitor.update(dict(window=1000, eval_every=0, eval_params="ema", eval_chunk=16, grid_every=250,
                          grid_size=16, grid_columns=4))
    c.train.update(dict(steps=8000, log_every=10, checkpoint_every=250, keep_checkpoints=3))
    return c
