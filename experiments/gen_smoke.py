"""Smoke generator for the synthetic world: a small pixel-space FLUX transformer (32x32 images as
64 tokens of 4x4 patches) with a small T5 over the world's words, trained by flow matching on
rendered scenes. It is meant to be imperfect (judge alignment well below 1), leaving room for RL.

    python -m rdance.run.pretrain_generator --config=experiments/gen_smoke.py --workdir=/tmp/gen_smoke

The generator is exported to WORKDIR/export; fine-tune it with experiments/finetune_smoke.py.

What it learns (rdance.run.judge_generators, the fine-tuning config's 64 held-out prompts x 4 samples,
2 idle CPU cores): colours and places, not shapes. Nearly every object is drawn as a round blob
that the judge names a circle, whatever shape was asked (asked square or triangle: named circle
in 73-78% of blobs), so `eval/check/shape_given_colour` sits near 1/3:

| steps | wall | judge | colour_found | shape_given_colour | count | relation |
|---|---|---|---|---|---|---|
| 1500 (this config) | 9:30 | 0.221 | 0.787 | 0.375 | 0.217 | 0.006 |
| 4000 (--config.train.steps=4000) | 25:54 | 0.257 | 0.819 | 0.385 | 0.276 | 0.022 |

Classifier-free guidance (``--config.model.caption_dropout=0.1 --config.model.guidance_scale=3``,
1500 steps, 9:40; the scale is recorded in the export and `judge_generators --guidance_scale`
overrides it) helps a little and does not teach shapes:

| sampled with guidance | judge | colour_found | shape_given_colour |
|---|---|---|---|
| 1 (none) | 0.208 | 0.728 | 0.378 |
| 3 | 0.237 | 0.821 | 0.408 |
| 6 | 0.243 | 0.821 | 0.429 |

Twice as wide (`model.heads=8`, 256 wide) with logit-normal t (`data.t_sampling=logit_normal`) and
guidance 3, 1500 steps (22 min): judge 0.280, colour_found 0.868, shape_given_colour 0.410.
Better colours and counts, the same shapes.

Finer patches (`model.patch_size=2`: 256 tokens of 2x2; caption_dropout 0.1, guidance 3) cost
3.5 s per step here (0.28 steps/s, so about 90 minutes for 1500 steps), and were stopped at step
500. By then they had judge 0.148, colour_found 0.642 and shape_given_colour 0.305, and no sign
of shapes.

Where shapes get lost: started from a render of "a red square" noised to t0 (20 Euler steps from
there, 24 noises), the guided generator gives back squares from t0 <= 0.4 (24/24), but rounds
them into blobs from t0 = 0.6 (16 of 24 named circle) and t0 = 1 (30 blobs named circle, 2
squares). The shape is decided between t = 0.8 and 0.4, and there the model does not follow the
shape word. ReFL with refl.window=5 (t <= 0.25) never reaches that range.
"""
import ml_collections

from rdance.core.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # rdance.world.generator.WorldGeneratorConfig fields (vocab_size comes from the tokenizer).
    # vae_*: the AutoencoderKL whose packed latents the transformer generates (vae_channels=()
    # trains the old pixel-space generator, patch_size pixels a token); vae_scale/vae_shift are
    # measured after the VAE trains.
    c.model = dict(image_size=32, patch_size=4, vae_channels=(32, 64), vae_latent_channels=4, vae_layers=1,
                   vae_groups=8, max_tokens=12, text_dim=64, text_layers=2, text_heads=4,
                   heads=4, head_dim=32, double_layers=2, single_layers=2, axes_dims_rope=(8, 12, 12),
                   shift=1.0, caption_dropout=0.1, guidance_scale=3.0, param_dtype="float32", dtype="",
                   remat="none", attention="auto")
    # The VAE stage (rdance.world.autoencoder): Adam with warm-up and cosine decay; L1 + MSE +
    # edge_weight * edge L1 + kl_weight * KL; eval_prompts held-out renders reconstructed and judged.
    c.vae = dict(steps=600, batch_size=32, learning_rate=2e-3, warmup_steps=20, kl_weight=1e-4, edge_weight=1.0,
                 seed=0, log_every=50, eval_prompts=64)
    c.data = dict(num_examples=1_000_000, global_batch_size=64, seed=0, t_sampling="uniform")
    # Held-out prompts judged during training (`samples` each, fixed noise).
    c.eval = dict(prompts=64, samples=2, prompt_seed=7, num_steps=20, chunk=64, sample_seed=0)
    # Judge-labelled preference pairs over the trained generator's samples (0 prompts: none),
    # mixed with rendered pairs, written to WORKDIR/pairs/{train,eval}.jsonl for train_reward.
    c.pairs = dict(num_prompts=0, eval_prompts=256, samples_per_prompt=4, pairs_per_prompt=2,
                   rendered_pairs=0, eval_rendered_pairs=0, seed=0)
    c.optim = dict(name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=100,
                   b1=0.9, b2=0.99, weight_decay=0.0, grad_clip_norm=1.0)
    c.mesh = dict(shape=(1, -1, 1), rules=DEFAULT_RULES)
    # train.peak_tflops: peak dense TFLOP/s per device that MFU is measured against; 0 takes the
    # local chip's from rdance.core.hardware (none for a CPU: TFLOP/s are logged, MFU is not).
    c.train = dict(steps=1500, log_every=50, eval_every=250, checkpoint_every=250,
                   keep_checkpoints=2, async_checkpoints=True, peak_tflops=0.0)
    return c
