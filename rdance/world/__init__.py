"""The synthetic world: compositional prompts, a renderer, and a programmatic judge.

Every image has a known ground truth, so the judge can say, the way GenEval does, whether an
image shows the requested objects, counts, colours and positions. The judge never trains
anything; it measures.
"""
from rdance.world.prompts import COLOURS, SHAPES, Scene, ObjectSpec, sample_scene
from rdance.world.render import render, render_variant
from rdance.world.judge import Judgement, judge

__all__ = ["COLOURS", "SHAPES", "Scene", "ObjectSpec", "sample_scene", "render", "render_variant",
           "Judgement", "judge"]
