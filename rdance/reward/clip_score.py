"""A CLIP-family preference score (PickScore's): logit_scale.exp() * cosine(image, prompt) from a
transformers ``CLIPModel`` folder, with the folder's own image preprocessing and tokenizer.

    scorer = CLIPScorer.from_pretrained("/ckpt/PickScore_v1")
    scores = scorer.score(images, prompts)     # uint8 [N, H, W, 3] and N prompts -> float [N]

Images are prepared as ``CLIPImageProcessor`` prepares them (preprocessor_config.json): resize
the shortest side (PIL, bicubic by default), centre crop, rescale to [0, 1], normalise by the
folder's mean and std; numpy and PIL only (rdance.models.clip_image). Prompts are tokenised with the folder's tokenizer
(transformers' AutoTokenizer: tokenizer files only, no model code), padded to the text tower's
length and truncated there, as PickScore's processor is called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.models.clip import CLIPModel, load_clip_model
from rdance.models.clip_image import PREPROCESSOR_FILE, ImagePreprocessor  # noqa: F401  (re-exported)

class CLIPScorer:
    """PickScore-style scores from a CLIPModel folder: ``score(images, prompts)`` is
    logit_scale.exp() * cosine(image embedding, prompt embedding), per (image, prompt) pair."""

    def __init__(self, model: CLIPModel, tokenizer, preprocess: ImagePreprocessor, batch_size: int = 32):
        self.model, self.tokenizer, self.preprocess, self.batch_size = model, tokenizer, preprocess, batch_size
        self.max_length = model.cfg.text.max_position_embeddings
        size = model.cfg.vision.image_size
        if (preprocess.crop_height, preprocess.crop_width) != (size, size) and preprocess.do_center_crop:
            raise ValueError(f"{PREPROCESSOR_FILE} crops to {preprocess.crop_height}x{preprocess.crop_width} but the "
                             f"vision tower takes {size}x{size}: the processor and model do not belong together")
        graphdef, state = nnx.split(model)

        def pair_scores(state, pixels, ids, mask):
            m = nnx.merge(graphdef, state)
            image, text = m.image_embeds(pixels), m.text_embeds(ids, mask)
            return jnp.exp(m.logit_scale[...].astype(jnp.float32)) * jnp.sum(image * text, axis=-1)
        self._state, self._scores = state, jax.jit(pair_scores)

    @classmethod
    def from_pretrained(cls, path, **runtime) -> "CLIPScorer":
        """Model, tokenizer and image processor settings from one CLIPModel folder (errors name
        what is missing before any weights are read)."""
        from transformers import AutoTokenizer  # tokenizer files only, no model code
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP folder {path} does not exist")
        preprocess = ImagePreprocessor.from_pretrained(path)
        if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
            raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or vocab.json + merges.txt): "
                                    "save the CLIPProcessor or tokenizer into the model folder")
        model = load_clip_model(path, **runtime)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), preprocess)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        out = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True)
        return np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], np.int32)

    def score(self, images, prompts: Sequence[str]) -> np.ndarray:
        """float32 [N]: the score of image i for prompt i."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images and {len(prompts)} prompts: score takes one prompt per image")
        out = []
        for s in range(0, len(prompts), self.batch_size):
            chunk = prompts[s:s + self.batch_size]
            pixels = self.preprocess(images[s:s + self.batch_size])
            ids, mask = self.tokenize(chunk)
            pad = self.batch_size - len(chunk)   # one compiled shape for every chunk
            if pad and len(prompts) > self.batch_size:
                pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, 0)])
                ids, mask = np.concatenate([ids, np.repeat(ids[-1:], pad, 0)]), np.concatenate([mask, np.repeat(mask[-1:], pad, 0)])
            out.append(np.asarray(self._scores(self._state, pixels, ids, mask))[:len(chunk)])
        return np.concatenate(out)
