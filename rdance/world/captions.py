"""The synthetic world's prompt sets and caption-image pairs: the training and held-out prompt
split that fine-tuning and the judge evals use, and rendered pairs for pretraining and the
fine-tuning anchor."""
from __future__ import annotations

import numpy as np

from rdance.world.prompts import KINDS, Scene, sample_scene
from rdance.world.render import render


class RenderedCaptions:
    """Faithful caption-image pairs of the synthetic world: item i is a random scene drawn and
    rendered with the generator seeded by (seed, i)."""

    def __init__(self, size: int, *, seed: int, image_size: int = 32, kinds=KINDS):
        self.size, self.seed, self.image_size, self.kinds = size, seed, image_size, kinds

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        scene = sample_scene(rng, self.kinds)
        return scene.prompt, render(scene, self.image_size, rng)


def distinct_split(draw, num_train: int, num_heldout: int, tries: int = 100_000) -> tuple[list, list]:
    """Distinct training and held-out items (by ``.prompt``) from ``draw()``, in the order drawn;
    the two lists share no prompt text."""
    seen: dict = {}
    for _ in range(tries):
        if len(seen) == num_train + num_heldout:
            break
        item = draw()
        seen.setdefault(item.prompt, item)
    else:
        raise ValueError(f"the world has fewer than {num_train + num_heldout} distinct prompts; "
                         "ask for fewer training or held-out prompts")
    items = list(seen.values())
    return items[:num_train], items[num_train:]


def world_prompt_split(seed: int, num_train: int, num_heldout: int) -> tuple[list[Scene], list[Scene]]:
    """Distinct training prompts and distinct held-out prompts that share no prompt text."""
    rng = np.random.default_rng(seed)
    return distinct_split(lambda: sample_scene(rng), num_train, num_heldout)
