"""The synthetic world: compositional prompts, a renderer, a programmatic judge, and its generator.

Every image has a known ground truth, so the judge can say, the way GenEval does, whether an
image shows the requested objects, counts, colours and positions. The judge never trains
anything; it measures.

Importing this package registers the world's generator kinds ('world', and 'world_video': the
moving world's miniature Wan) with
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
from rdance.world.world_wan import WorldWanGenerator  # noqa: E402

register_generator(WorldGenerator.kind, WorldGenerator.open)
register_generator(WorldWanGenerator.kind, WorldWanGenerator.open)

# The world's data sources ('world', 'world:KIND+KIND', 'world_clips', 'world_clip_misses', 'world_captions',
# 'world_clip_captions'), for rdance.data.registry.open_source.
from rdance.data.registry import register_source  # noqa: E402
from rdance.world import sources as _sources  # noqa: E402

register_source("world", _sources.open_pairs, "'world'", "'world:KIND+KIND'")
register_source("world_clips", _sources.open_clip_pairs, "'world_clips'", "'world_clips:KIND+KIND'")
register_source("world_clip_misses", _sources.open_clip_misses, "'world_clip_misses:MISTAKE+MISTAKE'")
register_source("world_captions", _sources.open_captions, "'world_captions'")
register_source("world_clip_captions", _sources.open_clip_captions, "'world_clip_captions'",
                "'world_clip_captions:MISTAKE+MISTAKE'")
