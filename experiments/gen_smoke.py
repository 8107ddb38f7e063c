"""Smoke generator for the synthetic world: a miniature FLUX. A small ``AutoencoderKL`` of the FLUX
VAE's architecture (rdance.models.flux.vae at widths 16/32, 4 latent channels, downsampling 2) is
trained first on rendered scenes, then frozen; a small FLUX transformer (4 heads x 32, 2 double +
2 single blocks) with a small T5 over the world's words is trained by flow matching on the VAE's
16x16x4 latents, packed 2x2 as FLUX packs them (64 tokens of 16 channels). Caption dropout 0.1
teaches the unconditional branch, and samples use classifier-free guidance 3.

    python -m rdance.run.pretrain_generator --config=experiments/gen_smoke.py --workdir=/tmp/gen_smoke

The generator is exported to WORKDIR/export (generator.json, tokenizer/, text_encoder/, transformer/
and vae/ in diffusers' AutoencoderKL layout); fine-tune it with experiments/finetune_smoke.py.
``--config.model.vae_channels='()'`` trains the older pixel-space generator (4x4 patches as tokens).

Measured on an Intel Xeon, 2 cores, no GPU, **shared**: the load average was 10-14 throughout
(other jobs on the same 2 cores), so every wall time below is about 3x what 2 idle cores take
(the pixel generator's 0.43 s/step idle ran at ~1.5 s/step beside them). Judged by the
pretraining's eval: 64 held-out prompts (prompt seed 7) x 2 samples, 20 Euler steps, guidance 3.

VAE stage (900 steps of 32 renders, Adam 4e-3 with cosine decay, L1 + MSE + edge L1 + 1e-4 KL;
1.53 s/step loaded, 23:56 wall): the judge on its reconstructions of the eval renders is the
ceiling of any generator on it:

| VAE | steps | recon judge | colour_found | shape_given_colour | count | relation | mean abs error |
|---|---|---|---|---|---|---|---|
| widths (16, 32), lr 3e-3 | 300 | 0.127 | 0.275 | 0.429 | 0.088 | 0.000 | 0.028 |
| widths (16, 32), lr 4e-3 (this config) | 900 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 0.0036 |

At 300 steps the shapes already survive (squares, triangles and circles are crisp) but every
colour is drawn a muted yellow, so the judge finds no colour; at 900 steps it is exact. VAE step
time at batch 32 (loaded): widths (16, 32) 0.90 s, (32, 64) 2.33 s, (32, 32) 1.36 s, (16, 32)
without the mid-block attention 0.77 s.

Transformer on that VAE's latents (batch 64, AdamW 1e-3 cosine over 700 steps, guidance 3;
2.63 s/step loaded, 30:39 wall for 700 steps, so VAE + transformer took 54:35 on the loaded
cores; idle, an estimated 7.5 + 5 minutes). The must-show target of issue #21
(shape_given_colour >= 0.75, judge >= 0.45) is **not reached**:

| what | steps | eval set | judge | colour_found | shape_given_colour | count | relation |
|---|---|---|---|---|---|---|---|
| VAE reconstructions of the renders (ceiling) | 900 (VAE) | seed 7, 64 x 1 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |
| latent generator, mid-cosine | 350 | seed 7, 64 x 2 | 0.195 | 0.691 | 0.376 | 0.167 | 0.000 |
| latent generator, end of the cosine | 700 | seed 7, 64 x 2 | 0.167 | 0.603 | 0.366 | 0.128 | 0.023 |
| same, judge_generators (finetune_smoke's held-out split) | 700 | seed 1, 64 x 4 | 0.184 | 0.593 | 0.402 | 0.173 | 0.011 |
| same, guidance 1 | 700 | seed 1, 64 x 4 | 0.184 | 0.628 | 0.370 | 0.191 | 0.000 |

Why: the VAE is not the limit (its reconstructions pass every check). The samples have crisp,
flat-coloured edges, as the decoder draws them, but irregular outlines: "bell" and bean shapes
from latents off the VAE's manifold, so the judge names few of them square or triangle and
finds fewer colours than the pixel generator did. 700 transformer steps are too few for this
latent space (the loss was still falling, 0.30 -> 0.26 over the last 250 steps). What would
reach the target, by the issue's measurements of a similar design (the same T5 + FLUX on an
8x8x8 autoencoder reached shape_given_colour 0.64 / judge 0.49 at 1300 steps with guidance 3,
still rising): 2000-3000 transformer steps (about 15-25 minutes on 2 idle cores), a smoother
latent space (a larger ``vae.kl_weight``, so sampled latents decode to clean shapes), and
logit-normal t (``data.t_sampling``), none of which this session had the cores to measure.

Earlier, the pixel-space generator (``model.vae_channels='()'``, 4x4 patches of pixels as tokens,
no guidance) drew colours and places but not shapes: nearly every object a round blob named
circle, `shape_given_colour` near 1/3 (rdance.run.judge_generators, the fine-tuning config's 64
held-out prompts x 4 samples, 2 idle CPU cores):

| steps | wall | judge | colour_found | shape_given_colour | count | relation |
|---|---|---|---|---|---|---|
| 1500 | 9:30 | 0.221 | 0.787 | 0.375 | 0.217 | 0.006 |
| 4000 | 25:54 | 0.257 | 0.819 | 0.385 | 0.276 | 0.022 |
| 1500, caption dropout 0.1, guidance 3 | 9:40 | 0.237 | 0.821 | 0.408 | - | - |
| 1500, 256 wide, logit-normal t, guidance 3 | 22:00 | 0.280 | 0.868 | 0.410 | - | - |

Started from a render of "a red square" noised to t0, the pixel generator gave back squares
from t0 <= 0.4 but rounded them into blobs from t0 = 0.6: the shape is decided between t = 0.8
and 0.4, where it did not follow the shape word. The cause measured for issue #21: pixel-patch
tokens (the same T5 + FLUX on an autoencoder's latents follows shape words), not the text pathway.
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
    c.model = dict(image_size=32, patch_size=4, vae_channels=(16, 32), vae_latent_channels=4, vae_layers=1,
                   vae_groups=8, max_tokens=12, text_dim=64, text_layers=2, text_heads=4,
                   heads=4, head_dim=32, double_layers=2, single_layers=2, axes_dims_rope=(8, 12, 12),
                   shift=1.0, caption_dropout=0.1, guidance_scale=3.0, param_dtype="float32", dtype="",
                   remat="none", attention="auto")
    # The VAE stage (rdance.world.autoencoder): Adam with warm-up and cosine decay; L1 + MSE +
    # edge_weight * edge L1 + kl_weight * KL; eval_prompts held-out renders reconstructed and judged.
    c.vae = dict(steps=900, batch_size=32, learning_rate=4e-3, warmup_steps=20, kl_weight=1e-4, edge_weight=1.0,
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
