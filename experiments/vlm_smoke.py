"""Pretrain the smoke VLM by captioning synthetic-world images, so the smoke reward model starts,
like the paper's InternVL RMs, from a model that can already see.

    python -m rdance.run.train_reward --config=experiments/vlm_smoke.py --workdir=/tmp/vlm_smoke

1500 steps take ~10.5 min on 2 idle cores; held-out caption token accuracy 0.80 / 0.88 / 0.90 /
0.91 / 0.91 at steps 500..1500. Per word: shapes 0.86-0.97, colours 0.82-0.90 (which object a
caption names first is a coin toss), relation words 0.00 (a two-object caption continues with
"and" as often as with a relation). Grounding questions on held-out near misses, share rejected:
colour 0.90, count 0.98, missing object 1.00, shape 0.35, relation 0.02.

``experiments/vlm_smoke.py:small`` is the demo's small VLM (see ``SIZES``).

Then: ``python -m rdance.run.train_reward --config=experiments/rm_smoke.py --workdir=/tmp/rm_smoke
--config.rm.pretrained=/tmp/vlm_smoke/export``.
"""
import ml_collections

from experiments import rm_smoke


# Variant ``small``: the VLM of the demo's small reward model, the smoke RM's widths halved and
# depths x 2/3 (experiments/ablations/rm_size.py's "medium"): vision 32 x 1 layer, text 64 x 2.
SIZES = {"large": {}, "small": dict(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "large"
    if size not in SIZES:
        raise ValueError(f"experiments/vlm_smoke.py:{size}: variants are large (the default) and small")
    c = rm_smoke.get_config()
    c.model.update(SIZES[size])
    c.rm.paradigm = "caption"
    c.rm.max_prompt_tokens = 56   # grounding questions; captions need 32
    c.rm.max_answer_tokens = 16
    c.data.train = "world_captions"
    # Half captions, half 'Does the image show "PROMPT"?' with yes/no answers (near misses drawn
    # for "no"), as a VLM's instruction data holds grounding questions beside its captions.
    c.data.question_share = 0.5
    c.data.eval_sets = "captions=world_captions"
    c.data.train_pairs = 200000
    c.data.eval_pairs = 256
    c.data.global_batch_size = 64
    c.optim.learning_rate = 2e-3
    c.train.steps = 1500
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    return c
