"""Pretrain the synthetic world's generator: flow matching on rendered caption-image pairs.

    python -m rdance.run.pretrain_generator --config=experiments/gen_smoke.py --workdir=/tmp/gen

``kind`` picks the world: 'world' (the default; stills, a miniature FLUX) or 'world_video' (the
moving world's clips, a miniature Wan 2.1: rdance.world.video_generator, experiments/video_smoke.py,
its VAE trained by rdance.world.video_autoencoder, judged by the motion judge, exported as a
diffusers WanPipeline folder). For stills:

With a VAE (``model.vae_channels``, the recipe's default) the VAE is trained first on world
renders (rdance.world.autoencoder, config section ``vae``; written to WORKDIR/vae with its latent
statistics and reconstruction judge in WORKDIR/vae_stats.json, reused when the command is rerun),
then frozen. The text encoder (a small T5 over the world's word tokenizer) and the FLUX
transformer then train jointly by flow matching on the VAE's packed latents of random world
scenes (rdance.world.generator). Every
``train.eval_every`` steps the programmatic judge scores one sample per held-out prompt
(``eval/judge``; ``eval/check/*``: which kinds of check pass, see docs/finetune.md). At the end
the generator is exported to ``WORKDIR/export`` (generator.json, tokenizer/, text_encoder/ in
transformers' T5 layout, transformer/ and vae/ in diffusers' layouts), the folder ``rdance.run.finetune``
starts from (``--config.generator.path=WORKDIR/export``).

With ``pairs.num_prompts > 0`` it also writes ``WORKDIR/pairs/{train,eval}.jsonl``: preference
pairs over the trained generator's samples labelled by the judge (rdance.world.sampled_pairs),
for a reward model that has seen this generator's images. Rerunning the command on a finished
workdir only exports and writes the pairs again.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags, logging
from flax import nnx

from rdance.run import cli

from rdance.core import console, sharding, status
from rdance.diffusion import generator as genlib
from rdance.world.autoencoder import train_vae
from rdance.world.generator import WorldGenerator
from rdance.world.motion import RenderedClips
from rdance.world.video_autoencoder import train_clip_vae
from rdance.world.video_generator import WorldVideoGenerator
from rdance.train.generator_eval import Sampler
from rdance.world.captions import RenderedCaptions
from rdance.train.host import sync, to_host
from rdance.train.loop import Task, train
from rdance.world.sampled_pairs import write_pairs

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)


KINDS = {WorldGenerator.kind: WorldGenerator, WorldVideoGenerator.kind: WorldVideoGenerator}


def make_generator(config, workdir: str):
    """A fresh generator of ``config.kind`` whose tokenizer lives in WORKDIR/tokenizer (written by process 0)."""
    kind = config.get("kind", WorldGenerator.kind)
    if kind not in KINDS:
        raise ValueError(f"config key kind={kind!r}: pretrain_generator trains {' or '.join(map(repr, KINDS))}")
    folder = os.path.join(workdir, "tokenizer")
    sizes = dict(config.model, dtype=config.model.dtype or None)
    if jax.process_index() == 0:
        KINDS[kind].write_tokenizer(folder)
    sync("generator_tokenizer_written")
    return KINDS[kind].create(sizes, folder, seed=config.seed)


def motion_kinds(config) -> dict:
    """The motion prompt kinds the moving world's data draws ({} for all of them)."""
    kinds = config.data.get("motion_kinds")
    return {"kinds": tuple(kinds)} if kinds else {}


def with_trained_vae(gen, config, workdir: str):
    """The generator with its VAE trained by config section ``vae`` (or the one WORKDIR holds)."""
    if isinstance(gen, WorldVideoGenerator):
        return train_clip_vae(gen, config.vae, workdir, **motion_kinds(config))[0]
    return train_vae(gen, config.vae, workdir)[0] if gen.cfg.vae_channels else gen


def make_task(config, gen) -> Task:
    d = config.data
    if isinstance(gen, WorldVideoGenerator):
        source = RenderedClips(d.num_examples, seed=d.seed, image_size=gen.cfg.image_size, frames=gen.cfg.frames,
                               **motion_kinds(config))
    else:
        source = RenderedCaptions(d.num_examples, seed=d.seed, image_size=gen.cfg.image_size)

    def transform(example):
        prompt, image = example
        return {"image": image, **{k: v[0] for k, v in gen.tokenize([prompt]).items()}}

    def loss_fn(model, batch, rng):
        x0 = gen.encode(gen.frozen, batch["image"])   # the frozen VAE's latents (constants here)
        ids = jnp.arange(x0.shape[0], dtype=jnp.int32)
        tokens = gen.drop_captions({"ids": batch["ids"], "mask": batch["mask"]}, jax.random.fold_in(rng, 2), ids)
        cond = gen.condition(model, {}, tokens)
        return jnp.mean(genlib.flow_matching_loss(gen, model, cond, x0, rng, ids, d.t_sampling)), {}

    return Task(make_model=gen.make_model, loss_fn=loss_fn, source=source, transform=transform)


def make_evaluator(config, gen):
    """The generator's own held-out evaluator (the judge, or the motion judge) on ``eval.prompts``
    held-out prompts of ``eval.prompt_seed``, ``eval.samples`` samples each."""
    e = config.eval
    split = ml_collections.ConfigDict(dict(prompt_seed=e.prompt_seed, train_prompts=0, eval_prompts=e.prompts,
                                           motion_kinds=motion_kinds(config).get("kinds", ())))
    mesh = sharding.make_mesh(config.mesh.shape)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    sampler = Sampler(gen, graphdef, mesh, e.num_steps, e.chunk, e.sample_seed)
    evaluate = gen.heldout_evaluator(sampler, gen.prompts(split)[1], e.samples)
    return lambda params, step: evaluate(params, gen.frozen)[0]


def main(argv):
    del argv
    config, workdir = cli.start()
    gen = with_trained_vae(make_generator(config, workdir), config, workdir)
    task = make_task(config, gen)
    if config.eval.prompts:
        task.evaluate = make_evaluator(config, gen)
    result = train(config, workdir, task)
    status.exit_if_preempted(result.preempted)
    params = to_host(result.state.params)
    export_dir = os.path.join(workdir, "export")
    if jax.process_index() == 0:
        gen.export(params, export_dir)
    sync("generator_exported")
    logging.info("exported the generator to %s", export_dir)
    p = config.get("pairs")
    if p and p.num_prompts and jax.process_index() == 0:   # on this host's devices alone
        graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
        local = sharding.make_mesh((1, -1, 1), jax.local_devices())
        sampler = Sampler(gen, graphdef, local, config.eval.num_steps, config.eval.chunk, p.seed)
        for split, prompts, rendered, seed in (("train", p.num_prompts, p.rendered_pairs, p.seed),
                                               ("eval", p.eval_prompts, p.eval_rendered_pairs, p.seed + 10_000)):
            write_pairs(os.path.join(workdir, "pairs", f"{split}.jsonl"), sampler, params, gen,
                        num_prompts=prompts, samples_per_prompt=p.samples_per_prompt,
                        pairs_per_prompt=p.pairs_per_prompt, rendered_pairs=rendered, seed=seed)


if __name__ == "__main__":
    console.run(main, flags_parser=cli.parse_flags)
