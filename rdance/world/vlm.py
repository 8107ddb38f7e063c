"""The world's vision-language model from scratch: its word tokenizer knows every word the
reward templates write and every word of the world (criteria, prompts, rationales)."""
from __future__ import annotations

from rdance.reward import folder as rm_folder
from rdance.world.pairs import ALIGNMENT_CRITERIA, PreferencePairs


def world_corpus() -> list[str]:
    """Every word the smoke RM will read or write: templates, criteria, prompts, rationales."""
    pairs = PreferencePairs(400, seed=12345, size=32)
    return [*rm_folder.template_corpus(), ALIGNMENT_CRITERIA,
            *(pairs[i].prompt + " " + pairs[i].rationale for i in range(len(pairs)))]


def write_model_folder(model, image_size: int, folder: str) -> str:
    """An untrained InternVL folder (``model``'s sizes) whose tokenizer reads the world."""
    return rm_folder.write_model_folder(model, image_size, folder, world_corpus())
