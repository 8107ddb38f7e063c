"""Fine-tune the smoke world generator against the smoke reward model (ReFL or RWR) on CPU.

    python -m rdance.run.finetune --config=experiments/finetune_smoke.py --workdir=/tmp/ft_refl \\
        --config.generator.path=/tmp/gen_smoke/export --config.reward.path=/tmp/rm_smoke/export

Make the two folders with ``python -m rdance.run.pretrain_generator --config=experiments/gen_smoke.py``
and ``python -m rdance.run.train_reward --config=experiments/rm_smoke.py``. ``--config.algo=rwr`` for
reward-weighted fine-tuning; ``--config.lora.rank=8`` for LoRA instead of full fine-tuning;
``--config.bank.select=bottom`` for the bottom-k reference control. eval/judge in metrics.jsonl
is the programmatic judge's mean alignment on held-out prompts.

Measured (2 CPU cores; gen_smoke trained 4000 steps; rm_smoke's pairwise RM, 0.879 on rendered
pairs but 0.57 on pairs of this generator's samples; lr 1e-4). Judge of the EMA parameters every
50 steps, 64 held-out prompts x 2 samples (monitor.eval_samples=2):

| run | 0 | 50 | 100 | 150 | 200 | 250 |
|---|---|---|---|---|---|---|
| refl, window 10 | 0.264 | 0.329 | **0.342** | 0.302 | 0.295 | 0.293 |
| refl, window 10, grad_steps 10 | 0.264 | 0.334 | 0.299 | 0.327 | 0.304 | 0.282 |
| refl, window 14, grad_steps 14 | 0.264 | 0.321 | 0.292 | | | |
| refl, window 10, rm_smoke's pointwise RM | 0.264 | 0.291 | 0.310 | 0.298 | 0.305 | |
| rwr | 0.264 | 0.249 | 0.277 | 0.271 | 0.275 | 0.251 |

ReFL peaks at +0.07 to +0.08 within 50-100 steps (1-3 minutes), then the reward keeps rising
(refl window 10: 0.46 -> 0.66 mean over each 50 steps, window std 0.26 -> 0.21) while the judge
falls back. It teaches colour (eval/check/colour_found 0.83 -> 0.96-0.98) and not shape
(shape_given_colour 0.40 -> 0.37-0.46): the generator draws nearly every object as a round blob
(see gen_smoke.py), this RM tells the blobs' shapes apart poorly, and letting the gradient reach
the steps where shapes are decided (grad_steps) does not change that. Judged with one sample per
prompt, an earlier run with the same settings read 0.381 at step 100 (and window 5 0.327-0.341,
window 20 0.310, rwr 0.270): single-sample evals add about +-0.04.
"""
import ml_collections

from rdance.core.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.algo = "refl"                     # refl | rwr
    # kind: world (a rdance.run.pretrain_generator export) | flux (a diffusers FluxPipeline folder) |
    # wan (a diffusers WanPipeline folder; experiments/finetune_wan.py adds its num_frames, negative_prompt, vae_remat).
    c.generator = dict(kind="world", path="", transformer_path="", height=32, width=32,
                       guidance_scale=3.5, max_sequence_length=512, dtype="", remat="none",
                       attention="auto",   # rdance.models.attention: auto, xla, chunked, cudnn, splash
                       attention_q_chunk=512, attention_k_chunk=512)   # queries / keys per chunk of 'chunked'
    c.reward = dict(path="", dtype="float32", criteria="", remat="none", attention="auto",
                    attention_q_chunk=512, attention_k_chunk=512)
    c.lora = dict(rank=0, alpha=8.0, targets=r"(attn|ff|ff_context|proj_mlp)/")  # rank 0: full fine-tuning
    c.sampler = dict(num_steps=20, t_sampling="uniform")
    c.data = dict(prompt_file="", eval_prompt_file="", prompt_seed=1, train_prompts=128, eval_prompts=64,
                  samples_per_prompt=2, global_batch_size=16, seed=0)
    # Best-of-N references from the frozen starting generator (pairwise RMs only).
    c.bank = dict(num_samples=8, top_k=1, select="top", seed=1234, chunk=64)
    # window: k is drawn from the last `window` of sampler.num_steps steps (ImageReward: 10 of 40).
    # shift: the scored image is translated by up to this many pixels (0: off), see finetune_step.
    # With shift=0, no anchor and lr 1e-4, ReFL against the demo's 65%-accurate RM drew a dot
    # lattice on the RM's 4-pixel patch grid: judge 0.144 -> 0.000 in 120 steps. With shift=2, the
    # anchor at weight 1 and lr 2e-5, the same run went 0.144 -> 0.200 (eval every 20 steps: 0.149,
    # 0.185, 0.189, 0.227, 0.176, 0.200).
    # grad_steps: Euler steps the gradient runs back through, from k (1: ReFL's single step).
    c.refl = dict(window=5, grad_steps=1, scale=1.0, loss="linear", hinge_margin=1.0, references="sample",
                  shift=2)
    c.rwr = dict(temperature=0.5)
    # The anchor: flow-matching loss on caption-image pairs (world: renders). drop_captions: with the
    # generator's pretraining caption dropout (world generators; FLUX and Wan have none), so the
    # empty-caption branch that guidance subtracts keeps being trained.
    c.anchor = dict(weight=1.0, path="", seed=99, drop_captions=True)
    c.ema = dict(decay=0.99, warmup=True)
    c.optim = dict(name="adamw", learning_rate=2e-5, schedule="constant", warmup_steps=0,
                   b1=0.9, b2=0.99, weight_decay=0.0, grad_clip_norm=1.0, grad_accum_steps=1)
    # eval_samples: samples judged per held-out prompt (each eval; one sample's judge swings by
    # about 0.03 between neighbouring evals of the same run).
    c.monitor = dict(window=50, collapse_eps=0.02, eval_every=25, eval_params="both", eval_samples=2,
                     eval_chunk=64, eval_seed=0, grid_every=50, grid_size=16, grid_columns=8)
    # A held-out prompt file scored during fine-tuning (rdance.train.prompt_eval; off while prompts
    # is ""): every `every` steps, `samples` samples per prompt with fixed noise (that of
    # `rdance.run.evaluate --seed=seed --batch_size=batch_size`), scored by a pointwise/regressive
    # RM folder (`rm`, each of the comma-separated `criteria`) and/or a CLIPModel folder (`clip`).
    c.eval = dict(prompts="", every=25, samples=2, seed=0, batch_size=8, rm="", criteria="alignment", clip="")
    c.export = dict(use_ema=True)
    c.mesh = dict(shape=(1, -1, 1), rules=DEFAULT_RULES)
    # compiler_options: XLA options for the step's compile, "name=value,..." (tests use
    # xla_backend_optimization_level=0 to compile faster).
    # train.peak_tflops: peak dense TFLOP/s per device that MFU is measured against; 0 takes the
    # local chip's from rdance.core.hardware (none for a CPU: TFLOP/s are logged, MFU is not).
    c.train = dict(steps=200, log_every=5, checkpoint_every=50, keep_checkpoints=2, async_checkpoints=True,
                   compiler_options="", peak_tflops=0.0)
    return c
