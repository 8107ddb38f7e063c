"""Smoke reward model: a small InternVL-shaped RM trained from scratch on the synthetic world
(judge-labelled pairs with 10% label noise), evaluated on clean held-out pairs.

    python -m rdance.run.train_reward --config=experiments/rm_smoke.py --workdir=/tmp/rm_smoke \
        --config.rm.pretrained=/tmp/vlm_smoke/export     # experiments/vlm_smoke.py's export

Training pairs draw their near misses shape-heavy (``data.mistake_weights.shape=4``: a wrong
shape is 4 in 7 faithful-vs-near-miss pairs, 4 in 8 for relation prompts; 1 in 4 or 5 when drawn
uniformly; held-out pairs stay uniform). Drawn uniformly, the RM never learnt shapes in 1250 steps (faithful vs wrong shape 0.52):
the easy kinds (colour, missing object) take the gradient while shape sits on a plateau, which an
RM trained on wrong shapes alone leaves after ~250 steps (0.50 -> 0.75 -> 0.80 at 200 / 300 / 400).
From that VLM, on 2 idle cores, held-out in-domain accuracy at steps 250..1250:

| training near misses | seed | accuracy at 250 / 500 / 750 / 1000 / 1250 | 1024 other pairs | wall |
|---|---|---|---|---|
| shape x4 (this recipe) | 0 | 0.648 / 0.781 / 0.836 / 0.885 / **0.879** | 0.856 | 12:29 |
| shape x4 (this recipe) | 1 | 0.688 / 0.756 / 0.775 / 0.855 / **0.863** | 0.879 | - |
| uniform | 0 | 0.705 / 0.795 / 0.830 / 0.840 / 0.848 | 0.845 | 14:20 |
| uniform | 1 | 0.676 / 0.764 / 0.787 / 0.805 / 0.801 | 0.845 | 13:05 |
| regressive baseline, shape x4 | 0 | 0.848 / 0.930 / 0.922 / 0.938 / **0.934** | - | - |

The regressive baseline (``rm.paradigm=regressive``: one image per row, a scalar head, Bradley-Terry)
beats the pairwise generative RM at this scale, and sees left and right (relations set 0.914 vs
0.797): unlike the paper's InternVL RMs, this VLM was never taught to judge, so the yes/no head
brings no prior, and a row with one image is easier for a 3-layer LM than a row with two.

The uniform runs' wall predates encoding each pair's images once (~11% of the step). Seed 1 =
``--config.seed=1 --config.data.seed=1`` (another pair stream and held-out set; its
held-out set is ~0.03 harder for every RM). Also tried: shape x8 and count x2 (seed 1: 0.848);
shape x4 in 1000 steps (seed 1: 0.803). Faithful-vs-one-mistake pairs by mistake (seed 0):
colour 0.93, missing object 0.97, count 0.88, shape 0.79 (uniform: 0.52), relation 0.52: left and
right stay unseen (an RM trained on relation pairs alone is still at 0.50 after 300 steps).
Without ``rm.pretrained`` the model starts from scratch and must learn to see from preference
labels alone (the sizes below).

Variants: ``--config.rm.paradigm=regressive`` (the baseline), ``pointwise``;
clips of the moving world: ``--config.data.train=world_clips --config.data.eval_sets=in_domain=world_clips
--config.rm.video_frames=4 --config.rm.max_prompt_tokens=256`` (each clip's frames as
"Frame1: <image>..." in the prompt);
``--config.rm.answer_format=decision_first`` (CoT rationales, weight rm.rationale_weight).
"""
import ml_collections

from rdance.core.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Sizes of the InternVL-shaped model built from scratch (ignored with rm.pretrained).
    c.model = dict(patch_size=4, downsample_ratio=0.5, vision_hidden=64, vision_layers=2,
                   vision_heads=4, text_hidden=128, text_layers=3, text_heads=4, text_kv_heads=2,
                   # From scratch only: the vision position embeddings' initial spread (0: zeros,
                   # as transformers' InternVL starts them).
                   vision_position_init_std=0.0)
    c.rm = dict(
        pretrained="",                 # a Hugging Face InternVL folder; "" = from scratch
        paradigm="pairwise",           # pairwise | pointwise | regressive
        answer_format="none",          # none | decision_first | rationale_first | mixed
        rationale_weight=0.25, pointwise_ce_weight=0.1,
        criteria="alignment", normalise=True,
        max_prompt_tokens=120, max_tiles=1, remat="none",
        attention="auto",              # rdance.models.attention: auto, xla, chunked, cudnn, splash
        row_weights=False,             # true: each record's loss times its stored weight (converted sets)
        attention_q_chunk=512, attention_k_chunk=512,   # queries / keys per chunk of 'chunked'
        # Clips (data.train=world_clips): the frames of each clip the RM sees (0: all) and which
        # (rdance.reward.video: uniform, segments, head); saved with the RM, so scoring agrees.
        video_frames=0, video_sampling="uniform",
        max_answer_tokens=4)  # 72 with rationales
    c.data = dict(train="world", eval_sets="in_domain=world,relations=world:relation",
                  train_pairs=200000, eval_pairs=256, eval_batch_size=64, image_size=32,
                  label_noise=0.1, seed=0, global_batch_size=32, skip_bad_records=False,
                  # JSONL sources: image paths may leave the file's folder only if allowed; images
                  # of more pixels are bad records (PIL's own decompression-bomb limit).
                  allow_outside_paths=False, max_image_pixels=89_478_485,
                  # Share of pairs that set a faithful render against a near miss; the rest
                  # rank two images drawn from {faithful, each kind of mistake}.
                  clean_share=0.75,
                  # How often each kind of near miss is drawn for training pairs (held-out pairs
                  # draw uniformly): wrong shapes are the hard negatives, see the docstring.
                  mistake_weights=dict(colour=1.0, shape=4.0, count=1.0, missing=1.0, relation=1.0),
                  # world_captions only: share of grounding questions among the captions.
                  question_share=0.0,
                  # world_clips only: frames per clip, and how often each kind of near miss is
                  # drawn for training clip pairs (rdance.world.clip_pairs.CLIP_MISTAKES; uniform
                  # here: drawn uniformly, a clip RM stayed at chance on shape and direction).
                  clip_frames=8,
                  clip_mistake_weights=dict(direction=1.0, static=1.0, swap=1.0, colour=1.0, shape=1.0, vanish=1.0),
                  # The tokenizer of a model built here knows the moving world's words even when
                  # no set reads clips: a VLM pretrained on stills that a clip RM starts from.
                  motion_words=False)
    c.optim = dict(name="adamw", learning_rate=3e-4, schedule="cosine", warmup_steps=50,
                   b1=0.9, b2=0.98, weight_decay=0.01, grad_clip_norm=1.0)
    c.mesh = dict(shape=(1, -1, 1), rules=DEFAULT_RULES)
    # train.peak_tflops: peak dense TFLOP/s per device that MFU is measured against; 0 takes the
    # local chip's from rdance.core.hardware (none for a CPU: TFLOP/s are logged, MFU is not).
    c.train = dict(steps=1250, log_every=50, eval_every=250, checkpoint_every=250,
                   keep_checkpoints=2, async_checkpoints=True, peak_tflops=0.0)
    return c
