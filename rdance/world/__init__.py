"""The synthetic world: compositional prompts, a renderer, a programmatic judge, and its generator.

Every image has a known ground truth, so the judge can say, the way GenEval does, whether an
image shows the requested objects, counts, colours and positions. The judge never trains
anything; it measures.

Importing this package registers the world's generator kind ('world') with
rdance.diffusion.generator, so entrypoints that may open one import ``rdance.world``.
"""
from rdance.world.prompts import COLOURS, SHAPES, Scene, ObjectSpec, sample_scene
from rdance.world.render import render, render_variant
from rdance.world.judge import Judgement, judge

__all__ = ["COLOURS", "SHAPES", "Scene", "ObjectSpec", "sample_scene", "render", "render_variant",
           "Judgement", "judge"]

# The world's generator kind, for rdance.diffusion.generator.open_generator.
from rdance.diffusion.generator import register_generator  # noqa: E402
from rdance.world.generator import WorldGenerator  # noqa: E402

register_generator(WorldGenerator.kind, WorldGenerator.open)
