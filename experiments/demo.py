"""The demo: the RewardDance story on the synthetic world, on a CPU, in one command.

    python -m rdance.run.demo --workdir=/tmp/demo

It starts, as the paper does, from pretrained models: the world generator and two caption-pretrained
VLMs, a small and a large one, shipped in rdance/world/pretrained (their commands, wall times and
scores are in its manifest.json; ``--config.pretrained=false`` trains them here first, at the
demo's shorter budgets). Stages, each an rdance entrypoint in its own folder under the workdir
(rdance/run/demo.py wires them): judge-labelled preference pairs over the generator's samples
(rdance.run.make_pairs, the RMs' test on the images RL shows them); for each RM size, train the
pairwise generative RM from its VLM (experiments/rm_smoke.py), build its Best-of-N reference bank
and fine-tune the generator with ReFL against it (experiments/finetune_smoke.py); a control
fine-tuning with the reward's weight at 0 (the anchor loss alone); judge every generator on the
same held-out prompts and noise (rdance.run.judge_generators); and write WORKDIR/report/report.md
(+ .html), which sets the sizes side by side: RM accuracy, reward and reward-std curves, judge.

Every recipe number comes from those smoke configs; each stage's ``set`` section overrides only
what the demo's time budget needs (steps, eval and checkpoint cadence, how much data it writes),
so a retuned recipe flows into the demo. ``estimate_s`` is a stage's expected wall time on 2
idle CPU cores (for the ETA). Override anything, e.g. ``--config.rm.set.train.steps=800``, or keys
the demo does not set with ``--config.rm.extra="optim.learning_rate=3e-4;data.label_noise=0"``;
a size's own overrides are ``--config.sizes.small.rm.optim.learning_rate=1e-3``.

Variant ``:ci`` (``--config=experiments/demo.py:ci``): tiny models trained here (nothing shipped),
a few steps of each stage; it checks the plumbing, not the quality.
"""
import ml_collections

# The tiny sizes of tests/conftest.py and tests/train/conftest.py (the Colab smoke test's too).
TINY_GENERATOR = dict(text_dim=32, text_layers=1, text_heads=2, heads=2, head_dim=16, axes_dims_rope=(4, 6, 6),
                      double_layers=1, single_layers=1, vae_channels=(8, 8), vae_latent_channels=4, vae_groups=4)
TINY_VAE_STAGE = dict(steps=4, batch_size=8, log_every=2, eval_prompts=8)
TINY_VLM = dict(patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1,
                text_heads=2, text_kv_heads=1)
# Unoptimised machine code compiles about twice as fast; the CI variant's runs are a few steps long.
FAST_COMPILE = "xla_backend_optimization_level=0,xla_llvm_disable_expensive_passes=true"


def stage(config: str, estimate_s: float, **overrides) -> dict:
    """A stage: the experiments/ file its entrypoint runs, its expected seconds, the overrides
    (``set``, nested like the recipe) and ``extra``: more overrides as one string for the command
    line, e.g. ``--config.rm.extra="optim.learning_rate=3e-4;model.text_layers=4"``."""
    return dict(config=config, estimate_s=estimate_s, set=overrides, extra="")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "full"
    if variant not in ("full", "ci"):
        raise ValueError(f"experiments/demo.py:{variant}: variants are full (the default) and ci")
    c = ml_collections.ConfigDict()
    c.variant = variant
    # true: the generator and the VLMs are the shipped ones (rdance/world/pretrained); false: the
    # generator and vlm stages train them first (the generator at 1500 steps, the VLMs at 400:
    # weaker than the shipped ones, and about 20 minutes more).
    c.pretrained = True
    # With pretrained=false: the VAE stage (gen_smoke's 900 steps, 5:10 on one core of an AMD
    # EPYC), then 1500 of the transformer's (10:30 with its evals; judge 0.271 on the pretraining's
    # eval): bench/results/world_generator.md. The shipped generator has 9000.
    c.generator = stage("experiments/gen_smoke.py", 960,
                        train=dict(steps=1500, eval_every=500, checkpoint_every=250, log_every=50))
    # Judge-labelled pairs over the generator's samples: the RMs' held-out test on the images RL
    # will show them ("samples" eval set) and, with rm.train_data=pairs, their training set.
    c.pairs = stage("experiments/gen_smoke.py", 30, pairs=dict(num_prompts=0, eval_prompts=160))
    # With pretrained=false, once per size (each size's vlm_smoke variant).
    c.vlm = stage("experiments/vlm_smoke.py", 180, train=dict(steps=400, eval_every=100, checkpoint_every=100))
    # The RM recipe both sizes share (rm_smoke's, shape-heavy near misses), 600 steps (the large
    # RM: 0.846 held-out at step 400 of an 800-step run, 0.865 at 800; at 500 steps 0.822 on an
    # AMD EPYC but 0.793 on an Intel Xeon, the same settings: XLA's float rounding differs by CPU,
    # so the step count keeps a margin; the small: 0.63 at 600 and 800). Each size has its own
    # time estimate (rm_estimate_s).
    c.rm = stage("experiments/rm_smoke.py", 0, train=dict(steps=600, eval_every=150, checkpoint_every=150))
    c.rm.train_data = "recipe"          # recipe: rm_smoke's data.train | pairs: the pairs stage's train.jsonl | mix
    c.rm.pairs_share = 0.5              # mix: the share of training records drawn from the pairs stage
    # The RM sizes (model scaling, the paper's Table 2): each a VLM (experiments/vlm_smoke.py's
    # variant, shipped as rdance/world/pretrained/<shipped>) turned into a pairwise RM with its
    # own overrides of the vlm and rm stages (``vlm``, ``rm``), then used for ReFL. The learning rate follows the
    # width, as in experiments/ablations/base.py.
    c.sizes = ml_collections.ConfigDict(dict(
        small=dict(vlm_variant="small", shipped="vlm_small", vlm=dict(), rm=dict(optim=dict(learning_rate=6e-4)),
                   rm_estimate_s=230),
        large=dict(vlm_variant="", shipped="vlm_large", vlm=dict(), rm=dict(), rm_estimate_s=510)))
    c.order = "small,large"
    # A control fine-tuning: the large RM's run with the reward's weight at 0 (refl.scale=0), so
    # what the anchor loss and EMA do alone is measured on the same prompts and steps.
    c.control = True
    # Fine-tuning; the bank stages run the same config with train.steps=0 (they only build the bank).
    c.finetune = stage("experiments/finetune_smoke.py", 250,
                       train=dict(steps=120, checkpoint_every=30), monitor=dict(eval_every=40, grid_every=40))
    c.bank = dict(estimate_s=100)
    c.evaluate = dict(estimate_s=45, samples_per_prompt=4, grid_prompts=16, grid_samples=4, scale=3)
    c.report = dict(html=True)
    if variant == "ci":
        c.pretrained = False
        c.generator.set = dict(model=TINY_GENERATOR, vae=TINY_VAE_STAGE, data=dict(global_batch_size=16),
                               optim=dict(warmup_steps=2),
                               eval=dict(prompts=8, samples=1, num_steps=4, chunk=8),
                               train=dict(steps=40, log_every=10, eval_every=40, checkpoint_every=20))
        c.generator.estimate_s = 25
        c.pairs.set = dict(eval=dict(num_steps=4, chunk=8),
                           pairs=dict(num_prompts=0, eval_prompts=8, samples_per_prompt=2, eval_rendered_pairs=8))
        c.pairs.estimate_s = 15   # rendered pairs too: a 40-step tiny generator's samples may all tie
        c.vlm.set = dict(model=TINY_VLM, data=dict(global_batch_size=8, eval_pairs=16, eval_batch_size=16),
                         optim=dict(warmup_steps=2), train=dict(steps=10, log_every=5, eval_every=10,
                                                                checkpoint_every=10))
        c.vlm.estimate_s = 25
        # The small size: the tiny VLM at half its text width (its variant's sizes replaced).
        c.sizes.small.vlm = dict(model=dict(TINY_VLM, text_hidden=16))
        c.rm.set = dict(data=dict(global_batch_size=8, eval_pairs=16, eval_batch_size=16, eval_sets="in_domain=world"),
                        optim=dict(warmup_steps=2), train=dict(steps=10, log_every=5, eval_every=10,
                                                               checkpoint_every=10))
        for size in c.sizes.values():
            size.rm_estimate_s = 30
        c.finetune.set = dict(
            sampler=dict(num_steps=4), refl=dict(window=2),
            data=dict(train_prompts=16, eval_prompts=8, global_batch_size=8, samples_per_prompt=2),
            bank=dict(num_samples=4, chunk=16),
            monitor=dict(window=4, eval_every=2, eval_samples=1, grid_every=0, eval_chunk=8),
            optim=dict(learning_rate=1e-3), train=dict(steps=4, log_every=1, checkpoint_every=2,
                                                       compiler_options=FAST_COMPILE))
        c.finetune.estimate_s = 40
        c.bank.estimate_s = 25
        c.evaluate.update(dict(estimate_s=20, samples_per_prompt=2, grid_prompts=8, grid_samples=2))
    return c
