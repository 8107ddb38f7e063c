"""CLIPModel (both towers, projections, logit scale) against transformers on a small random
config saved with save_pretrained; the scorer's preprocessing against CLIPImageProcessor (PIL);
clear errors for folders that are not a CLIPModel."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rdance.models import convert  # noqa: E402
from rdance.models.clip import load_clip_model  # noqa: E402
from rdance.models.flux.config import CheckpointTypeError  # noqa: E402
from rdance.reward.clip_score import CLIPScorer, ImagePreprocessor  # noqa: E402

ATOL = 1e-4
LETTERS = "abcdefghijklmnopqrstuvwxyz"
BOS, EOS = 52, 53
IMAGE, PATCH, MAX_LENGTH = 24, 8, 16


def char_tokenizer(folder):
    """A character-level CLIP BPE tokenizer: no merges, one token per letter."""
    vocab = {c: i for i, c in enumerate(LETTERS)}
    vocab.update({c + "</w>": len(LETTERS) + i for i, c in enumerate(LETTERS)})
    vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOS})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                      model_max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=60, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=BOS,
                         eos_token_id=EOS, pad_token_id=EOS),
        vision_config=dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE, patch_size=PATCH, hidden_act="gelu"),
        projection_dim=16, logit_scale_init_value=2.0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    char_tokenizer(folder / "tok").save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 26}, crop_size={"height": IMAGE, "width": IMAGE},
                                    image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]).save_pretrained(folder)
    return folder, model


def diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b.detach().numpy()))))


def test_embeds_and_logits_match_transformers(clip_folder):
    folder, ref = clip_folder
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 3, IMAGE, IMAGE)).astype(np.float32)      # NCHW, as torch takes it
    ids = rng.integers(0, 52, (2, MAX_LENGTH)).astype(np.int64)
    ids[:, 0], ids[0, 7], ids[1, MAX_LENGTH - 1] = BOS, EOS, EOS            # pooled at the first EOS
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
    model = load_clip_model(folder)
    with jax.default_matmul_precision("highest"):
        logits, image, text = model(ids.astype(np.int32), pixels.transpose(0, 2, 3, 1))
    errors = dict(image=diff(image, out.image_embeds), text=diff(text, out.text_embeds),
                  logits=diff(logits, out.logits_per_image))
    print("max abs error vs transformers", errors)
    assert all(e < ATOL for e in errors.values()), errors


def test_preprocessing_matches_the_image_processor(clip_folder):
    folder, _ = clip_folder
    rng = np.random.default_rng(1)
    reference = transformers.AutoImageProcessor.from_pretrained(folder)
    ours = ImagePreprocessor.from_pretrained(folder)
    for shape in [(30, 40, 3), (41, 26, 3), (IMAGE, IMAGE, 3)]:
        image = rng.integers(0, 256, shape).astype(np.uint8)
        want = reference(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        got = ours([image])
        assert got.shape == want.shape and np.max(np.abs(got - want)) < 1e-5, shape


def test_score_is_pickscore(clip_folder):
    """score(images, prompts) = logit_scale.exp() * cosine, through the folder's tokenizer and processor."""
    folder, ref = clip_folder
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 30, 36, 3)).astype(np.uint8)
    prompts = ["a red circle", "two squares", "blue"]
    scorer = CLIPScorer.from_pretrained(folder)
    scorer.batch_size = 2      # two chunks, the last one padded
    with jax.default_matmul_precision("highest"):
        got = scorer.score(images, prompts)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = ref(**tokens, pixel_values=torch.tensor(processor(images=list(images), return_tensors="np")["pixel_values"]))
    np.testing.assert_allclose(got, np.diag(out.logits_per_image.numpy()), atol=ATOL)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images[:2], prompts)


def test_old_checkpoints_position_ids_are_left_out(clip_folder, tmp_path):
    from safetensors.numpy import load_file, save_file
    folder, _ = clip_folder
    tensors = load_file(folder / "model.safetensors")
    tensors["vision_model.embeddings.position_ids"] = np.arange((IMAGE // PATCH) ** 2 + 1)[None]
    tensors["text_model.embeddings.position_ids"] = np.arange(MAX_LENGTH)[None]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    load_clip_model(tmp_path)


def test_wrong_folders_are_named(clip_folder, tmp_path):
    folder, ref = clip_folder
    text_only = tmp_path / "text"
    transformers.CLIPTextModel(ref.config.text_config).save_pretrained(text_only)
    with pytest.raises(CheckpointTypeError, match="not CLIPModel"):
        load_clip_model(text_only)
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_clip_model(tmp_path / "nowhere")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(convert.ConversionError, match="no safetensors weights"):
        load_clip_model(no_weights)
    (no_weights / "preprocessor_config.json").write_text((folder / "preprocessor_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        CLIPScorer.from_pretrained(no_weights)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json not found"):
        CLIPScorer.from_pretrained(text_only)
