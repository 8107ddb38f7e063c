"""The image encoder of Wan's image-to-video pipelines: a transformers CLIPVisionModel folder loaded
through rdance.models.clip, hidden_states[-2] (what WanImageToVideoPipeline.encode_image feeds
the transformer) at atol 1e-4, with CLIPImageProcessor's preprocessing; wrong folder errors."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rdance.models.clip import load_clip_vision  # noqa: E402
from rdance.models.clip_image import ImagePreprocessor  # noqa: E402
from rdance.models.flux.config import CheckpointTypeError  # noqa: E402

ATOL = 1e-4


def tiny_image_encoder(folder):
    """A CLIPVisionModel (gelu, as Wan's ViT-H/14) and its CLIPImageProcessor, saved in ``folder``."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=28, patch_size=14, hidden_act="gelu")
    model = transformers.CLIPVisionModel(cfg).eval()
    model.save_pretrained(folder / "image_encoder")
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor.save_pretrained(folder / "image_processor")
    return model, processor


def test_penultimate_hidden_state_matches_transformers(tmp_path):
    model, processor = tiny_image_encoder(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    pixels = processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        ref = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    ours_pixels = ImagePreprocessor.from_pretrained(tmp_path / "image_processor")([image])
    np.testing.assert_allclose(ours_pixels, pixels.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    tower = load_clip_vision(tmp_path / "image_encoder")
    with jax.default_matmul_precision("highest"):
        for index in (-2, 0, -1):
            ours = np.asarray(tower.hidden_state(ours_pixels, index))
            diff = float(np.abs(ours - ref[index].numpy()).max())
            print(f"hidden_states[{index}] max abs diff: {diff:.2e}")
            assert ours.shape == (1, 5, 32) and diff < ATOL
    with pytest.raises(ValueError, match="out of range"):
        tower.hidden_state(ours_pixels, 5)
    # Released Wan image encoders (older transformers) prefix every key with vision_model.
    from safetensors.numpy import load_file, save_file
    path = tmp_path / "image_encoder" / "model.safetensors"
    save_file({"vision_model." + k: v for k, v in load_file(path).items()}, path, metadata={"format": "pt"})
    with jax.default_matmul_precision("highest"):
        again = np.asarray(load_clip_vision(tmp_path / "image_encoder").hidden_state(ours_pixels))
    assert np.abs(again - ref[-2].numpy()).max() < ATOL


def test_a_clip_model_folder_is_not_a_vision_tower(tmp_path):
    cfg = transformers.CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2),
                                  vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=28, patch_size=14))
    transformers.CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointTypeError, match="CLIPVisionModel"):
        load_clip_vision(tmp_path / "clip")
