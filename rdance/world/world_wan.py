"""The moving world's video generator as the fine-tuning loop opens it (kind 'world_video'): the
WanPipeline folder that ``pretrain_generator`` writes with ``kind='world_video'``, fine-tuned as any
Wan folder (rdance.diffusion.wan_generator.WanGenerator: the transformer trains, UMT5 and the VAE
are frozen), with what the world adds: the clip shape and prompt length from the folder's
world_video.json, the moving world's prompt split (:class:`MovingWorld`), rendered clips for the
pretraining anchor, and the motion judge on held-out prompts (rdance.world.video_generator.MovingWorld).
"""
from __future__ import annotations

import os
import shutil

from rdance.diffusion.wan_generator import WanGenerator
from rdance.models import attention as attnlib
from rdance.world.generator import read_folder_config
from rdance.world.video_generator import CONFIG_FILE, MovingWorld, WorldVideoConfig, WorldVideoGenerator


class WorldWanGenerator(MovingWorld, WanGenerator):
    kind = WorldVideoGenerator.kind

    @classmethod
    def open(cls, cfg, mesh, rules, abstract: bool = False) -> "WorldWanGenerator":
        """A config's ``generator`` section (kind 'world_video'): ``path`` a folder from
        ``pretrain_generator --config=experiments/video_smoke.py``; clip shape and prompt length are
        the folder's, guidance ``guidance_scale`` (1: none)."""
        if not cfg.path:
            raise ValueError(f"generator.kind={cfg.kind!r} needs generator.path (a folder from python -m "
                             "rdance.run.pretrain_generator --config=experiments/video_smoke.py)")
        world = read_folder_config(cfg.path, CONFIG_FILE, cls.kind, WorldVideoConfig, {},
                                   "python -m rdance.run.pretrain_generator --config=experiments/video_smoke.py "
                                   "writes one to WORKDIR/export")
        settings = dict(mesh=mesh, rules=rules, num_frames=world.frames, height=world.image_size,
                        width=world.image_size, guidance_scale=cfg.guidance_scale,
                        max_sequence_length=world.max_tokens, dtype=cfg.dtype or None, remat=cfg.remat,
                        vae_remat=cfg.get("vae_remat", "none"), attention=attnlib.from_config(cfg))
        gen = cls.abstract(cfg.path, **settings) if abstract else cls.from_pretrained(cfg.path, **settings)
        gen._world = world
        return gen

    @property
    def world(self) -> WorldVideoConfig:
        return self._world

    def export(self, params, folder: str) -> str:
        """WanGenerator's WanPipeline folder, with the base folder's world_video.json, so the
        fine-tuned folder opens as kind 'world_video' again."""
        folder = super().export(params, folder)
        shutil.copy2(os.path.join(self.path, CONFIG_FILE), os.path.join(folder, CONFIG_FILE))
        return folder
