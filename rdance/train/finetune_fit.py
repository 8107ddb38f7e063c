"""The fine-tuning step of a config, lowered from shapes alone for any devices: what
``rdance.run.fit_check --entry=rdance.run.finetune`` compiles for a TPU slice and measures against its HBM.

Nothing is loaded or allocated. The generator and the reward model come from their config files:
the folders ``generator.path`` and ``reward.path`` name when they exist (only config.json,
reward_config.json and the tokenizer are read, never weights), else ``generator.architecture``
(FLUX: a dict of the diffusers folder's config files, see experiments/finetune_flux_dev.py) and
``reward.architecture`` (``config``: the InternVL config.json, ``reward_config``: the RM settings).
The state, the frozen arrays and the batch are ShapeDtypeStructs sharded on the mesh, and the step
is the one ``finetune`` compiles: both come from ``finetune_setup.build`` (here with
``abstract=True``), so the program is the same (tests/train/test_fit_check.py compares them).
It holds the rollout without gradient, the graded step, the VAE decode, the RM (forward and
backward to the pixels), the text encoders run on the step's prompts, the anchor loss, the
optimizer and the EMA. The reference bank, the sampler for evals and sample grids, and host-side
tokenisation are not in it.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rdance.core import sharding
from rdance.diffusion import samples
from rdance.train.finetune_data import FinetuneExamples
from rdance.train.finetune_setup import Setup, build, compiler_options
from rdance.train.loop import batch_spec


@dataclasses.dataclass
class LoweredStep:
    lowered: jax.stages.Lowered
    compiler_options: dict      # train.compiler_options, as finetune compiles with them
    mesh: jax.sharding.Mesh
    params: dict[str, int]      # parameter count by part
    batch: str                  # what one step processes, in words


def batch_shapes(config, setup: Setup):
    """Sharded ShapeDtypeStructs of a global batch, with the structure the loop's examples have."""
    gen, rm, paradigm = setup.gen, setup.rm, setup.paradigm
    prompts = ["one red circle"]   # words every generator's tokenizer knows (the world's vocabulary is closed)
    rm_tokens = rm.tokens(prompts, gen.image_shape, pairwise=paradigm == "pairwise",
                          criteria=config.reward.criteria or None)
    references = np.zeros((1, config.bank.top_k, *gen.image_shape), np.uint8) if paradigm == "pairwise" else None
    anchor = [(prompts[0], np.zeros(gen.image_shape, np.uint8))] if config.anchor.weight > 0 else None
    example = FinetuneExamples(1, gen.tokenize(prompts), rm_tokens, references, anchor, gen.tokenize)[0]
    rows = config.data.global_batch_size
    local = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), np.asarray(x).dtype), (rows, *np.shape(x))),
                         example)
    return batch_spec(local, setup.mesh)


def lower_step(config, devices) -> LoweredStep:
    """The fine-tuning step of ``config`` lowered for ``devices`` (e.g. a TPU topology's)."""
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    setup = build(config, mesh, config.mesh.rules, abstract=True)
    lowered = setup.lower(batch_shapes(config, setup))
    d, m = config.data, config.optim.grad_accum_steps
    what = (f"{config.algo}, {d.global_batch_size} prompts x {d.samples_per_prompt} samples of "
            f"{samples.describe(setup.gen.image_shape)} in "
            f"{m} micro-batch{'es' if m > 1 else ''}, {config.sampler.num_steps} sampler steps, {setup.paradigm} RM"
            + (", anchor" if config.anchor.weight > 0 else ""))
    return LoweredStep(lowered, compiler_options(config.train.compiler_options), mesh, setup.parameter_counts(), what)
