"""Opening a generator folder for sampling, whatever it holds: a FLUX pipeline (diffusers
``model_index.json`` layout) or a world generator (``generator.json`` of kind 'world', from
rdance.run.pretrain_generator or fine-tuning). The sampling commands (generate, evaluate) share it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from flax import nnx

from rdance.diffusion.search import SearchConfig, Searcher


@dataclasses.dataclass
class OpenGenerator:
    gen: object                 # the Generator (rdance.diffusion.generator protocol)
    searcher: Searcher
    trainable: object           # the transformer's (and text encoder's) parameters
    settings: dict              # what a samples.jsonl line records about the sampler

    def sample(self, prompts, verifier=None, seed: int = 0, config: SearchConfig | None = None):
        """rdance.diffusion.search.SearchResult of ``prompts`` (plain sampling by default)."""
        return self.searcher(self.trainable, self.gen.frozen, prompts, verifier, seed=seed, config=config)


def is_world_folder(path) -> bool:
    config = Path(path) / "generator.json"
    return config.is_file() and json.loads(config.read_text()).get("kind") == "world"


def open_generator_folder(path, *, steps: int, search: SearchConfig = SearchConfig(), height: int = 1024,
                          width: int = 1024, guidance: float = 3.5, max_sequence_length: int = 512,
                          dtype: str | None = None) -> OpenGenerator:
    """A world generator folder (its own image size; height, width and guidance unused) or a
    FluxPipeline folder, ready to sample ``steps`` Euler steps with ``search``."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path} is not a folder: give a FluxPipeline folder or a world generator folder")
    if is_world_folder(path):
        from rdance.world.generator import WorldGenerator
        gen = WorldGenerator.from_pretrained(str(path))
        graphdef = nnx.split(nnx.eval_shape(gen.make_model), nnx.Param)[0]
        trainable = gen.initial_params(None, None)
        settings = dict(height=gen.image_shape[0], width=gen.image_shape[1], num_steps=steps)
    else:
        from rdance.diffusion.flux_generator import FluxGenerator
        gen = FluxGenerator.from_pretrained(path, height=height, width=width, guidance_scale=guidance,
                                            max_sequence_length=max_sequence_length, dtype=dtype, vae_remat="none")
        graphdef, trainable = gen.transformer()
        settings = dict(height=height, width=width, num_steps=steps, guidance_scale=guidance,
                        max_sequence_length=max_sequence_length)
    return OpenGenerator(gen, Searcher(gen, graphdef, steps, search), trainable, settings)
