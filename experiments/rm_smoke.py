"""Smoke reward model: a small InternVL-shaped RM trained from scratch on the synthetic world
(judge-labelled pairs with 10% label noise), evaluated on clean held-out pairs.

    python -m rdance.train_reward --config=experiments/rm_smoke.py --workdir=/tmp/rm_smoke \
        --config.rm.pretrained=/tmp/vlm_smoke/export     # experiments/vlm_smoke.py's export

From that VLM the 1250 steps (lr 3e-4, cosine) took 14:20 on 2 idle cores and reached held-out
in-domain accuracy 0.705 / 0.795 / 0.830 / 0.840 / 0.848 at steps 250..1250 (relations 0.770).
A 900-step schedule on the same VLM: 0.676 / 0.779 / 0.775 / 0.793 / 0.822 / 0.826 at 150..900
(10:32). At lr 1e-3 (the earlier recipe) the same VLM learned slowly: 0.715 at 900; an earlier VLM
of the same recipe had reached 0.834 in 750 steps at lr 1e-3, so the outcome varies from run to
run by several points. Faithful-vs-one-mistake pairs by mistake (the 1250-step RM): colour 0.97,
missing object 1.00, count 0.91, shape 0.52, relation 0.52: the RM is blind to shapes and
left/right, although the VLM names shapes in its captions (token accuracy 0.86-0.97).
Without ``rm.pretrained`` the model starts from scratch and must learn to see from preference
labels alone (the sizes below).

Variants: ``--config.rm.paradigm=regressive`` (the baseline), ``pointwise``;
``--config.rm.answer_format=decision_first`` (CoT rationales, weight rm.rationale_weight).
"""
import ml_collections

from rdance.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Sizes of the InternVL-shaped model built from scratch (ignored with rm.pretrained).
    c.model = dict(patch_size=4, downsample_ratio=0.5, vision_hidden=64, vision_layers=2,
                   vision_heads=4, text_hidden=128, text_layers=3, text_heads=4, text_kv_heads=2)
    c.rm = dict(
        pretrained="",                 # a Hugging Face InternVL folder; "" = from scratch
        paradigm="pairwise",           # pairwise | pointwise | regressive
        answer_format="none",          # none | decision_first | rationale_first | mixed
        rationale_weight=0.25, pointwise_ce_weight=0.1,
        criteria="alignment", normalise=True,
        max_prompt_tokens=120, max_tiles=1, remat_policy="",
        max_answer_tokens=4)  # 72 with rationales
    c.data = dict(train="world", eval_sets="in_domain=world,relations=world:relation",
                  train_pairs=200000, eval_pairs=256, eval_batch_size=64, image_size=32,
                  label_noise=0.1, seed=0, global_batch_size=32, skip_bad_records=False,
                  # Share of pairs that set a faithful render against a near miss; the rest
                  # rank two images drawn from {faithful, each kind of mistake}.
                  clean_share=0.75,
                  # How often each kind of near miss is drawn for training pairs (eval pairs
                  # draw uniformly). Hard negatives: see the module docstring.
                  mistake_weights=dict(colour=1.0, shape=1.0, count=1.0, missing=1.0, relation=1.0),
                  # world_captions only: share of grounding questions among the captions.
                  question_share=0.0)
    c.optim = dict(name="adamw", learning_rate=3e-4, schedule="cosine", warmup_steps=50,
                   b1=0.9, b2=0.98, weight_decay=0.01, grad_clip_norm=1.0)
    c.mesh = dict(shape=(1, -1, 1), rules=DEFAULT_RULES)
    c.train = dict(steps=1250, log_every=50, eval_every=250, checkpoint_every=250,
                   keep_checkpoints=2, async_checkpoints=True)
    return c
