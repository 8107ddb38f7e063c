"""ReFL of the moving world's miniature Wan (experiments/video_smoke.py's export) against a clip
reward model trained on judged clip pairs, judged by the motion judge on held-out motion prompts.

    python -m rdance.run.finetune --config=experiments/finetune_video_smoke.py --workdir=/tmp/video_refl \\
        --config.generator.path=/tmp/video_smoke/export --config.reward.path=/tmp/rm_clips/export

The control is the same run with the reward's weight at 0 (``--config.refl.scale=0``): only the
anchor (flow matching on rendered clips) and the optimiser act, so the gain of ReFL over the
control is what the reward adds. Prompts are the moving world's split (``data.prompt_seed``,
``train_prompts``, ``eval_prompts``, ``motion_kinds``: one object, as the generator pretrained);
the clip shape and prompt length come from the folder. Figures: bench/results/video_refl.md.
"""
import ml_collections

from experiments import finetune_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = finetune_smoke.get_config()
    # kind world_video: a pretrain_generator export (WanPipeline folder + world_video.json); UMT5 and
    # the VAE are frozen, the transformer trains. Guidance 1: the smoke generator has no caption dropout.
    c.generator = dict(kind="world_video", path="", transformer_path="", guidance_scale=1.0, dtype="", remat="none",
                       vae_remat="none", attention="auto", attention_q_chunk=512, attention_k_chunk=512)
    c.lora.targets = r"(attn1|attn2|ffn)/"
    c.sampler = dict(num_steps=10, t_sampling="uniform")
    c.data.update(dict(prompt_seed=1, train_prompts=40, eval_prompts=16, samples_per_prompt=2, global_batch_size=8,
                       motion_kinds=("single",)))
    c.bank.update(dict(num_samples=4, chunk=16))
    # No pixel shift: the motion judge and the RM read positions across frames.
    c.refl.update(dict(window=3, shift=0))
    c.optim.learning_rate = 1e-4
    c.monitor.update(dict(window=20, eval_every=10, eval_samples=2, eval_chunk=32, grid_every=0))
    c.train.update(dict(steps=40, log_every=2, checkpoint_every=20))
    return c
