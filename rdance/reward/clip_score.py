"""A CLIP-family preference score (PickScore's): logit_scale.exp() * cosine(image, prompt) from a
transformers ``CLIPModel`` folder, with the folder's own image preprocessing and tokenizer.

    scorer = CLIPScorer.from_pretrained("/ckpt/PickScore_v1")
    scores = scorer.score(images, prompts)     # uint8 [N, H, W, 3] and N prompts -> float [N]

Images are prepared as ``CLIPImageProcessor`` prepares them (preprocessor_config.json): resize
the shortest side (PIL, bicubic by default), centre crop, rescale to [0, 1], normalise by the
folder's mean and std; numpy and PIL only. Prompts are tokenised with the folder's tokenizer
(transformers' AutoTokenizer: tokenizer files only, no model code), padded to the text tower's
length and truncated there, as PickScore's processor is called.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.models.clip import CLIPModel, load_clip_model

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class ImagePreprocessor:
    """What CLIPImageProcessor does, from its preprocessor_config.json keys."""
    shortest_edge: int | None = 224      # None: resize to (height, width) instead
    height: int | None = None
    width: int | None = None
    crop_height: int = 224
    crop_width: int = 224
    resample: int = 3                    # PIL's BICUBIC
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_pretrained(cls, folder) -> "ImagePreprocessor":
        path = Path(folder) / PREPROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a CLIP scorer folder needs the image processor's "
                                    f"settings (save the CLIPProcessor or CLIPImageProcessor with save_pretrained)")
        raw = json.loads(path.read_text())
        size = raw.get("size", {"shortest_edge": 224})
        size = {"shortest_edge": size} if isinstance(size, int) else size
        crop = raw.get("crop_size", {"height": 224, "width": 224})
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
        if "shortest_edge" not in size and not {"height", "width"} <= set(size):
            raise ValueError(f"{path}: size {size} is neither shortest_edge nor height/width")
        return cls(shortest_edge=size.get("shortest_edge"), height=size.get("height"), width=size.get("width"),
                   crop_height=int(crop["height"]), crop_width=int(crop["width"]),
                   resample=int(raw.get("resample", 3)), do_resize=raw.get("do_resize", True),
                   do_center_crop=raw.get("do_center_crop", True), do_rescale=raw.get("do_rescale", True),
                   rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
                   do_normalize=raw.get("do_normalize", True),
                   image_mean=tuple(raw.get("image_mean", cls.image_mean)),
                   image_std=tuple(raw.get("image_std", cls.image_std)))

    def resize_to(self, height: int, width: int) -> tuple[int, int]:
        if self.shortest_edge is None:
            return self.height, self.width
        short, long = min(height, width), max(height, width)
        new_long = int(self.shortest_edge * long / short)
        return (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)

    def __call__(self, images) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] (or a list of them, any sizes) -> float32 [N, h, w, 3]."""
        from PIL import Image
        out = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {i}: expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
            if self.do_resize:
                h, w = self.resize_to(*image.shape[:2])
                if (h, w) != image.shape[:2]:
                    image = np.asarray(Image.fromarray(image).resize((w, h), resample=self.resample))
            if self.do_center_crop:
                image = _center_crop(image, self.crop_height, self.crop_width)
            x = image.astype(np.float32)
            if self.do_rescale:
                x = x * np.float32(self.rescale_factor)
            if self.do_normalize:
                x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
            out.append(x)
        return np.stack(out)


def _center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop: top-left at (H - h) // 2, (W - w) // 2; zero padding where the
    image is smaller than the crop."""
    h, w = image.shape[:2]
    if h < height or w < width:
        ph, pw = max(height - h, 0), max(width - w, 0)
        image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width]


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
