"""Pretrain the synthetic world's generator: flow matching on rendered caption-image pairs.

    python -m rdance.run.pretrain_generator --config=experiments/gen_smoke.py --workdir=/tmp/gen

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
from absl import flags, logging
from flax import nnx

from rdance.run import cli

from rdance.core import console, sharding, status
from rdance.diffusion import generator as genlib
from rdance.world.autoencoder import train_vae
from rdance.world.generator import WorldGenerator
from rdance.train.generator_eval import Sampler
from rdance.world.captions import RenderedCaptions, world_prompt_split
from rdance.world.evaluate import JudgeEval
from rdance.train.host import sync, to_host
from rdance.train.loop import Task, train
from rdance.world.sampled_pairs import write_pairs

# --help lists the shared flags (--config, --workdir, ...) with this module's own.
flags.adopt_module_key_flags(cli)


def make_generator(config, workdir: str) -> WorldGenerator:
    """A fresh world generator whose tokenizer lives in WORKDIR/tokenizer (written by process 0)."""
    folder = os.path.join(workdir, "tokenizer")
    sizes = dict(config.model, dtype=config.model.dtype or None)
    if jax.process_index() == 0:
        WorldGenerator.write_tokenizer(folder)
    sync("generator_tokenizer_written")
    return WorldGenerator.create(sizes, folder, seed=config.seed)


def make_task(config, gen: WorldGenerator) -> Task:
    d = config.data
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


def make_evaluator(config, gen: WorldGenerator):
    e = config.eval
    _, scenes = world_prompt_split(e.prompt_seed, 0, e.prompts)
    mesh = sharding.make_mesh(config.mesh.shape)
    graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
    judge_eval = JudgeEval(Sampler(gen, graphdef, mesh, e.num_steps, e.chunk, e.sample_seed), gen, scenes, e.samples)
    return lambda params, step: judge_eval(params, gen.frozen)[0]


def main(argv):
    del argv
    config, workdir = cli.start()
    gen = make_generator(config, workdir)
    if gen.cfg.vae_channels:
        gen, _ = train_vae(gen, config.vae, workdir)
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
    p = config.pairs
    if p.num_prompts and jax.process_index() == 0:   # on this host's devices alone
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
