"""Does a VLM read motion off a clip's frames? Teacher-forced accuracy on the motion word of
held-out clip captions ("... moving LEFT", "... STAYING still"), per asked motion, for each VLM
folder given: the word its argmax puts where the caption names the motion.

    python bench/probe_motion_words.py --vlm=/tmp/vlm_motion/export --vlm=/tmp/vlm_clips/export

Chance is 1/4 among the four directions; a VLM that never saw clips answers no direction (its
still captions end where the motion word begins). A folder's tokenizer must know the moving
world's words (the VLM was trained with data.motion_words or on a clip source).

Two controls show whether the answer comes from the frames at all: "reversed" is the accuracy
when each clip's frames run backwards (a VLM that reads direction falls far below chance on the
moving clips), and "frozen dP" the mean total variation between its motion-word probabilities
(over the five words) on the clip and on the clip with every frame replaced by the first.
"""
import argparse
import collections
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MOTION_WORDS = ("left", "right", "up", "down", "staying")


def probe(folder: str, clips: int, frames: int, batch: int, seed: int):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import SingleDeviceSharding

    from experiments import vlm_smoke
    from rdance.reward.recipe import RewardTraining
    from rdance.reward.task import forward_rows
    from rdance.world.clip_pairs import WorldClipCaptions

    config = vlm_smoke.get_config()
    config.rm.pretrained, config.rm.max_prompt_tokens = folder, 40 + 24 * frames
    config.data.update(train="world_clip_captions", eval_sets="", clip_frames=frames)
    task = RewardTraining.from_config(config)
    tokenizer = task.builder.template.tokenizer
    ids = {tokenizer.convert_tokens_to_ids(w): w for w in MOTION_WORDS}
    if tokenizer.unk_token_id in ids:
        raise SystemExit(f"{folder}: its tokenizer lacks the motion words {MOTION_WORDS}; train it with "
                         "data.motion_words=True or on a clip source")
    abstract = nnx.eval_shape(task.make_model)
    device = SingleDeviceSharding(jax.devices()[0])
    params = task.initial_params(jax.tree.map(lambda _: device, nnx.to_pure_dict(nnx.state(abstract, nnx.Param))))
    graphdef, spec = nnx.split(abstract, nnx.Param)[0], task.loss_spec

    @jax.jit
    def probabilities(params, batch):
        net = nnx.merge(graphdef, params)
        return jax.nn.softmax(net.logits(forward_rows(net, batch, spec)[:, spec.answer_col:]), -1)

    def answer(records):
        rows = [task.builder(r, training=False) for r in records]
        stacked = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
        targets = np.asarray(stacked["targets"]).reshape(len(rows), -1)[:, spec.answer_col:]
        # The motion word is the caption's last motion word ('left of' may come before it).
        where = [max(j for j, t in enumerate(row) if int(t) in ids) for row in targets]
        p = np.asarray(probabilities(params, stacked))[np.arange(len(rows)), where]
        return p, targets[np.arange(len(rows)), where]

    source = WorldClipCaptions(clips, seed=seed, frames=frames)
    hits, counts, reversed_hits, frozen_shift = collections.Counter(), collections.Counter(), collections.Counter(), []
    word_ids = np.array(list(ids))
    for start in range(0, clips, batch):
        records = [source[i] for i in range(start, min(clips, start + batch))]
        p, truth = answer(records)
        backwards, _ = answer([dataclasses.replace(r, images=(r.images[0][::-1].copy(),)) for r in records])
        frozen, _ = answer([dataclasses.replace(r, images=(np.repeat(r.images[0][:1], frames, 0),)) for r in records])
        for r, t in enumerate(truth):
            word = ids[int(t)]
            counts[word] += 1
            hits[word] += int(p[r].argmax() == t)
            reversed_hits[word] += int(backwards[r].argmax() == t)
            frozen_shift.append(0.5 * np.abs(p[r, word_ids] - frozen[r, word_ids]).sum())
    return hits, counts, reversed_hits, float(np.mean(frozen_shift))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlm", action="append", required=True, help="A VLM folder (repeat to compare).")
    parser.add_argument("--clips", type=int, default=256, help="Held-out clip captions.")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=4242, help="The held-out clips' seed.")
    args = parser.parse_args()
    print(f"| VLM | motion word | {' | '.join(MOTION_WORDS)} | reversed | frozen dP | clips |")
    print("|---|---|" + "---|" * len(MOTION_WORDS) + "---|---|---|")
    for folder in args.vlm:
        hits, counts, reversed_hits, frozen_shift = probe(folder, args.clips, args.frames, args.batch, args.seed)
        cells = [f"{hits[w] / counts[w]:.3f} ({counts[w]})" if counts[w] else "-" for w in MOTION_WORDS]
        total = sum(counts.values())
        print(f"| {folder} | {sum(hits.values()) / total:.3f} | {' | '.join(cells)} | "
              f"{sum(reversed_hits.values()) / total:.3f} | {frozen_shift:.3f} | {total} |")


if __name__ == "__main__":
    main()
