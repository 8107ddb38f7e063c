"""Reward-model folders in the Hugging Face InternVL layout: an untrained one to train from
scratch (a word-level tokenizer for a given corpus), pretrained weights in, trained weights out.

The corpus of a from-scratch model is the caller's: :func:`template_corpus` holds the words the
reward templates write; the synthetic world adds its own (rdance.world.vlm)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.data.tokenizer import build_word_tokenizer
from rdance.models.internvl.api import abstract_model, export_state, load_state
from rdance.models.internvl.config import InternVLConfig, load_config
from rdance.reward import rows, templates as T

HEAD_FILE = "reward_head.npz"
RM_CONFIG_FILE = "reward_config.json"


def template_corpus() -> list[str]:
    """Every word the reward templates write: questions, answers, caption and grounding rows."""
    texts = [T.pairwise_question("p", c, f, "i", "i") + T.pointwise_question("p", c, f, "i")
             for c in T.CRITERIA for f in T.FORMATS]
    texts += [T.answer(y, "r", f) for y in (True, False) for f in T.FORMATS]
    texts += [rows.CAPTION_QUESTION.format(image="i"), rows.GROUNDING_QUESTION.format(image="i", prompt="p")]
    texts += ["image 1 image 2", " ".join(f"Frame{i}" for i in range(1, 65))]
    texts += [str(i) for i in range(10)]
    return texts


def padded_vocab(words: int) -> int:
    """Embedding rows for a tokenizer of ``words`` tokens: a multiple of 64, so the vocabulary
    splits over any tensor-parallel size up to 64 however many words the world has (the rows
    past the tokenizer are never fed and learn to lose every softmax)."""
    return -(-words // 64) * 64


def write_model_folder(model, image_size: int, folder: str, corpus: Iterable[str] | None = None) -> str:
    """config.json + tokenizer of an untrained InternVL-shaped model: ``model.architecture`` (a
    real checkpoint's config.json fields, e.g. for a fit check) or the small sizes in ``model``.
    The word-level tokenizer knows every word of ``corpus`` (default :func:`template_corpus`;
    with ``model.architecture`` the vocabulary size is the config's, the corpus only names ids)."""
    build_word_tokenizer(template_corpus() if corpus is None else corpus, folder)
    tokenizer = load_tokenizer(folder)
    image_token_id = tokenizer.convert_tokens_to_ids(tokenizer.context_image_token)
    if "architecture" in model:
        hf = dict(model.architecture.to_dict(), image_token_id=image_token_id)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
        return folder
    hf = {
        "model_type": "internvl", "downsample_ratio": model.downsample_ratio,
        "image_token_id": image_token_id,
        "projector_hidden_act": "gelu", "tie_word_embeddings": True,
        "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
        "vision_config": {
            "model_type": "internvl_vision", "hidden_size": model.vision_hidden,
            "num_hidden_layers": model.vision_layers, "num_attention_heads": model.vision_heads,
            "intermediate_size": 4 * model.vision_hidden, "image_size": [image_size, image_size],
            "patch_size": [model.patch_size, model.patch_size], "norm_type": "layer_norm",
            "use_qk_norm": False, "use_mean_pooling": True, "layer_scale_init_value": 0.1},
        "text_config": {
            "model_type": "qwen2", "vocab_size": padded_vocab(len(tokenizer)), "hidden_size": model.text_hidden,
            "num_hidden_layers": model.text_layers, "num_attention_heads": model.text_heads,
            "num_key_value_heads": model.text_kv_heads, "intermediate_size": 4 * model.text_hidden,
            "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": True},
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    return folder


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer  # tokenizers only, never model code
    return AutoTokenizer.from_pretrained(folder)


def pretrained_params(folder: str, config: InternVLConfig, shardings, paradigm: str):
    """The checkpoint's weights placed on ``shardings['vlm']``; a regressive head starts at 0."""
    _, abstract_state = abstract_model(config)
    state = load_state(folder, abstract_state, _with_values(abstract_state, shardings["vlm"]))
    params = {"vlm": nnx.to_pure_dict(state)}
    if paradigm == "regressive":
        shapes = {"kernel": (config.text.hidden_size, 1), "bias": (1,)}
        params["head"] = {k: jax.device_put(jnp.zeros(shapes[k], jnp.float32), s)
                          for k, s in shardings["head"].items()}
    return params


def _with_values(state: nnx.State, pure: dict) -> nnx.State:
    """A copy of ``state`` whose variables hold the values of the pure dict ``pure``."""
    state = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(state, pure)
    return state


def export(params, base_folder: str, export_dir: str, config) -> str:
    """Write the trained RM as an InternVL folder (transformers loads it) plus rdance's files:
    the tokenizer, the reward settings, and the regressive head if there is one."""
    vlm_config = load_config(base_folder)
    _, abstract_state = abstract_model(vlm_config)
    export_state(_with_values(abstract_state, params["vlm"]), vlm_config, export_dir)
    if jax.process_index() != 0:
        return export_dir
    for name in os.listdir(base_folder):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template",
                            "added_tokens", "preprocessor")):
            shutil.copy(os.path.join(base_folder, name), export_dir)
    if "head" in params:
        head = jax.device_get(params["head"])
        np.savez(os.path.join(export_dir, HEAD_FILE), kernel=head["kernel"], bias=head["bias"])
    rm = config.rm
    settings = {"paradigm": rm.paradigm, "answer_format": rm.answer_format, "criteria": rm.criteria,
                "normalise": rm.normalise, "max_prompt_tokens": rm.max_prompt_tokens,
                "max_answer_tokens": rm.max_answer_tokens, "max_tiles": rm.max_tiles,
                "video_frames": rm.get("video_frames", 0), "video_sampling": rm.get("video_sampling", "uniform")}
    with open(os.path.join(export_dir, RM_CONFIG_FILE), "w") as f:
        json.dump(settings, f, indent=2)
    return export_dir
