"""CLIP's image preprocessing (transformers' ``CLIPImageProcessor``) in numpy and PIL, from a
folder's preprocessor_config.json: resize the shortest side (PIL, bicubic by default), centre
crop, rescale to [0, 1], normalise by the folder's mean and std. Shared by the CLIP preference
score (rdance.reward.clip_score) and Wan's image-to-video image encoder
(rdance.diffusion.wan_pipeline), which sit on sibling layers and so cannot import each other.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

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
            raise FileNotFoundError(f"{path} not found: a CLIP folder needs the image processor's "
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
