"""ReFL (or reward-weighted fine-tuning) of Wan 2.1 text-to-video against a generative InternVL3
reward model that judges clips.

    python -m rdance.run.finetune --config=experiments/finetune_wan.py:1.3b \\
        --workdir=gs://bucket/wan-refl --config.generator.path=/ckpt/Wan2.1-T2V-1.3B-Diffusers \\
        --config.reward.path=/ckpt/rm-video-2b/export --config.data.prompt_file=/data/video_prompts.txt \\
        --distributed

The argument names the generator, 1.3b or 14b (or tiny: the recipe at toy sizes, for tests),
optionally with the RM size after a '+' (``1.3b+8b``; defaults 2b for 1.3b and 8b for 14b): an
InternVL3 RM trained on clips with experiments/rm_internvl3.py:SIZE and ``rm.video_frames`` (8 here,
picked ``uniform``ly from the first frame to the last; the RM folder's reward_config.json says what
it was trained with). The clip is Wan's 480x832 at 81 frames; each frame the RM sees is one 448px
tile, so a pairwise question holds 2 x 8 x 258 image tokens.

Defaults: Wan's own sampling settings (guidance 5.0 with the empty negative prompt, the folder's
flow shift, 3.0 at 480p) on 30 Euler steps, ReFL's gradient through the last of them at a step
drawn in the last 7; Best-of-4 references (a Wan clip costs minutes to sample); no pretraining
anchor (the anchor takes caption-image pairs; there is no caption-clip anchor); lr 1e-5,
grad-norm clip 1, EMA. ``--config.algo=rwr`` for reward-weighted flow matching,
``--config.lora.rank=64`` to train LoRA factors of the attention and MLP kernels only.

Will it fit? Compile the step for a TPU slice on a CPU from shapes alone (the configs below stand
in for the folders, see docs/finetune.md):

    python -m rdance.run.fit_check --entry=rdance.run.finetune --config=experiments/finetune_wan.py:1.3b \\
        --topology=v5p:2x2x1

As the recipe stands (the batch split over chips) it does not fit (bench/results/fit_check.md):
240.74 GiB of temporaries per chip there, and one 81-frame sample per chip alone needs 112.20 GiB.
``1.3b,seq`` (or ``14b,seq``) splits one clip over every chip of the slice instead (one prompt
per micro-batch; the transformer's tokens, the RM's sequence and the VAE decoder's width over
the chips, the parameters FSDP over them):

    python -m rdance.run.fit_check --entry=rdance.run.finetune --config=experiments/finetune_wan.py:1.3b,seq \\
        --topology=v5p:2x2x1 --config.data.samples_per_prompt=1

Measured (bench/results/fit_check.md) at v5p:2x2x1, the smallest v5p slice (4 chips), 81
frames, one sample per micro-batch, ``1.3b,seq`` fits: 48.64 GiB peak per chip of 95 (12.51 GiB
arguments, 36.13 GiB temporaries; the recipe's own layout runs out of HBM within 2 minutes of
compiling). The compile took 78 minutes on one CPU core. ``14b,seq`` is not yet measured.
"""
import ml_collections

from experiments import finetune_flux_dev, finetune_smoke
from rdance.core import sharding

# The Wan-AI/Wan2.1-T2V-*-Diffusers folders' component configs (their config.json values; the
# two sizes share the VAE, the UMT5-XXL encoder and the scheduler).
TRANSFORMER = {
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}
SHARED = dict(
    vae=dict(_class_name="AutoencoderKLWan", base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
             attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0),
    text_encoder=dict(model_type="umt5", vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                      num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu"),
    scheduler=dict(_class_name="UniPCMultistepScheduler", prediction_type="flow_prediction", use_flow_sigmas=True,
                   flow_shift=3.0, num_train_timesteps=1000, solver_order=2),
)


def architecture(size: str) -> dict:
    transformer = dict(_class_name="WanTransformer3DModel", patch_size=[1, 2, 2], in_channels=16, out_channels=16,
                       text_dim=4096, freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                       eps=1e-6, rope_max_seq_len=1024, **TRANSFORMER[size])
    return dict(SHARED, transformer=transformer)


# 'tiny': Wan's and InternVL3's structure at toy sizes (9 frames of 32x32, a 3-level VAE, one
# transformer block, a one-layer RM seeing 2 frames): its step lowers in about 15 s
# (tests/models/wan/test_wan_fit_check.py); libtpu's compile of it took 454 s on the loaded host.
TINY = dict(
    transformer=dict(_class_name="WanTransformer3DModel", patch_size=[1, 2, 2], num_attention_heads=2,
                     attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                     num_layers=1, rope_max_seq_len=32),
    vae=dict(_class_name="AutoencoderKLWan", base_dim=4, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
             temperal_downsample=[True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
    text_encoder=dict(model_type="umt5", vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu"),
    scheduler=SHARED["scheduler"],
)
TINY_RM = dict(
    config=dict(model_type="internvl", downsample_ratio=0.5, projector_hidden_act="gelu", tie_word_embeddings=True,
                vision_feature_layer=-1, vision_feature_select_strategy="default",
                vision_config=dict(model_type="internvl_vision", hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64, image_size=[32, 32], patch_size=[8, 8],
                                   norm_type="layer_norm", use_qk_norm=False, use_mean_pooling=True,
                                   layer_scale_init_value=0.1),
                text_config=dict(model_type="qwen2", vocab_size=1024, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                 max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
                                 hidden_act="silu", tie_word_embeddings=True)),
    reward_config=dict(max_prompt_tokens=120, max_tiles=1, video_frames=2, video_sampling="uniform"))

# ',seq': one clip split over every chip of the slice. The step's batch must split over the
# data-parallel axes ('data' x 'fsdp'), so a micro-batch of one prompt goes on a mesh whose chips
# are all on 'tensor': the token axis (and the VAE's width) split over it, the parameters FSDP
# over it (on 'embed'), no tensor parallelism.
SEQUENCE_RULES = tuple((name, {"embed": "tensor", "tokens": "tensor"}.get(name, None if target == "tensor" else target))
                       for name, target in sharding.DEFAULT_RULES)

RM_SIZE = {"1.3b": "2b", "14b": "8b"}
VIDEO_FRAMES = 8
# Prompts x samples per step, and the micro-batches they are split into.
BATCH = {"1.3b": (8, 2), "14b": (16, 4)}


def get_config(arg: str | None = "1.3b") -> ml_collections.ConfigDict:
    spec, _, layout = (arg or "1.3b").lower().partition(",")
    if layout not in ("", "seq"):
        raise ValueError(f"layout {layout!r} after ',': use seq (one clip split over the slice's chips) or nothing")
    size, _, rm_size = spec.partition("+")
    if size == "tiny":
        return tiny() if not layout else sequence_sharded(tiny())
    if size not in TRANSFORMER:
        raise ValueError(f"Wan size {size!r}: use one of {sorted(TRANSFORMER)} or tiny (optionally +RM size, "
                         "e.g. 1.3b+8b)")
    rm_size = rm_size or RM_SIZE[size]
    c = finetune_smoke.get_config()
    c.algo = "refl"
    c.generator.update(dict(kind="wan", path=f"/path/to/Wan2.1-T2V-{size.upper()}-Diffusers", num_frames=81,
                            height=480, width=832, guidance_scale=5.0, negative_prompt="", max_sequence_length=512,
                            dtype="bfloat16", remat="full", vae_remat="full", architecture=architecture(size)))
    rm = finetune_flux_dev.rm_architecture(rm_size)
    rm["reward_config"].update(video_frames=VIDEO_FRAMES, video_sampling="uniform", max_tiles=1,
                               max_prompt_tokens=2 * VIDEO_FRAMES * 258 + 256)
    c.reward.update(dict(path=f"/path/to/rm-video-{rm_size}/export", dtype="bfloat16", remat="full", architecture=rm))
    c.sampler.update(dict(num_steps=30, t_sampling="logit_normal"))
    prompts, accumulation = BATCH[size]
    c.data.update(dict(prompt_file="/path/to/video_prompts.txt", eval_prompt_file="", eval_prompts=8,
                       samples_per_prompt=2, global_batch_size=prompts))
    c.bank.update(dict(num_samples=4, top_k=1, select="top", chunk=8))
    c.refl.update(dict(window=7, scale=1.0, loss="linear", references="sample", shift=0))
    c.anchor.update(dict(weight=0.0, path=""))
    c.ema.update(dict(decay=0.999, warmup=True))
    c.optim.update(dict(learning_rate=1e-5, schedule="constant", warmup_steps=0, weight_decay=0.0,
                        grad_clip_norm=1.0, grad_accum_steps=accumulation))
    c.lora.targets = r"(attn1|attn2|ffn)/"
    c.monitor.update(dict(window=200, eval_every=0, eval_params="ema", eval_chunk=8, grid_every=100,
                          grid_size=8, grid_columns=1))
    c.train.update(dict(steps=2000, log_every=10, checkpoint_every=100, keep_checkpoints=3))
    return sequence_sharded(c) if layout else c


def sequence_sharded(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``c`` with one prompt per micro-batch, its clips split over every chip (SEQUENCE_RULES)."""
    c.mesh.shape, c.mesh.rules = (1, 1, -1), SEQUENCE_RULES
    c.optim.grad_accum_steps = c.data.global_batch_size
    return c


def tiny() -> ml_collections.ConfigDict:
    """The 1.3b recipe at toy sizes (TINY, TINY_RM): 2 prompts x 2 samples of 9 frames of 32x32."""
    c = get_config("1.3b")
    c.generator.update(dict(path="/path/to/tiny-wan", num_frames=9, height=32, width=32, max_sequence_length=8,
                            architecture=TINY))
    c.reward.update(dict(path="/path/to/tiny-rm", architecture=TINY_RM))
    c.sampler.num_steps, c.refl.window = 4, 2
    c.data.global_batch_size, c.optim.grad_accum_steps, c.monitor.window = 4, 1, 4
    return c
