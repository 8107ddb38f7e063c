"""Tiny random transformers InternVL models, saved once per session, for the rdance tests."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGE_TOKEN = 100
TOKENS_PER_TILE = 4  # (28 / 7)^2 patches, pixel-shuffled by 0.5

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=28, patch_size=7)
TEXT = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, vocab_size=128, max_position_embeddings=256)

FLAVOURS = {
    # InternVL3 1B-14B: the 300M InternViT (LayerNorm, no QK-norm), tied embeddings.
    "vit300m": dict(vision=dict(norm_type="layer_norm", use_qk_norm=False, attention_bias=True),
                    text=dict(), tie=True),
    # InternVL3 38B/78B: the 6B InternViT (RMSNorm, QK-norm), final LayerNorm, mask token,
    # untied head and YaRN RoPE scaling in the decoder.
    "vit6b": dict(vision=dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=False,
                              use_mean_pooling=False, use_mask_token=True),
                  text=dict(rope_parameters=dict(rope_type="yarn", factor=2.0, rope_theta=10000.0,
                                                 original_max_position_embeddings=128)),
                  tie=False),
}


def hf_config(flavour):
    f = FLAVOURS[flavour]
    return transformers.InternVLConfig(
        vision_config=dict(VISION, **f["vision"]),
        text_config=dict(TEXT, tie_word_embeddings=f["tie"], **f["text"]),
        image_token_id=IMAGE_TOKEN, image_seq_length=TOKENS_PER_TILE,
        tie_word_embeddings=f["tie"])


def random_hf_model(flavour, seed=0):
    """A transformers model with every parameter perturbed, so that no zero-initialised tensor
    (CLS, position embeddings, biases) can hide a mapping error."""
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(hf_config(flavour)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


_SAVED = {}


def saved(flavour, tmp_path_factory):
    """(flavour, torch model, folder written by save_pretrained), built once per session."""
    if flavour not in _SAVED:
        model = random_hf_model(flavour)
        path = tmp_path_factory.mktemp(flavour)
        model.save_pretrained(path)
        _SAVED[flavour] = (flavour, model, str(path))
    return _SAVED[flavour]


@pytest.fixture(scope="session", params=sorted(FLAVOURS))
def hf_folder(request, tmp_path_factory):
    return saved(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def hf_folder_300m(tmp_path_factory):
    return saved("vit300m", tmp_path_factory)


def hf_logits(model, ids, pixels, mask):
    """transformers' logits with generate's position ids (left padding skipped)."""
    positions = np.where(mask, np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                     attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()


def hf_greedy(model, ids, pixels, mask, new_tokens):
    """transformers' greedy continuation of a padded batch: the new tokens only."""
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                              attention_mask=torch.tensor(mask), max_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:].numpy()


def make_batch(seed=0):
    """A left-padded batch of 2 rows: 1 tile in row 0, 2 tiles in row 1 (3 tiles in all)."""
    rng = np.random.default_rng(seed)
    text = lambda n: list(rng.integers(1, 90, n))
    row0 = [0] * 4 + text(1) + [IMAGE_TOKEN] * TOKENS_PER_TILE + text(5)
    row1 = text(1) + [IMAGE_TOKEN] * (2 * TOKENS_PER_TILE) + text(5)
    ids = np.array([row0, row1], np.int64)
    mask = np.array([[0] * 4 + [1] * 10, [1] * 14], np.int64)
    pixels = rng.standard_normal((3, 3, 28, 28)).astype(np.float32)
    return ids, pixels, mask


@pytest.fixture(scope="session")
def batch():
    return make_batch


@pytest.fixture(scope="session")
def reference_logits():
    return hf_logits


@pytest.fixture(scope="session")
def reference_greedy():
    return hf_greedy
