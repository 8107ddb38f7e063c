"""InternVL's checkpoint keys: each rdance parameter path -> its key in a transformers ``*-hf``
checkpoint (``{i}`` for the scanned layers). rdance.models.convert reads and writes them."""
from __future__ import annotations

import re

from rdance.models.convert import Key

# transformers >= 4.52 names modules model.vision_tower... in memory but saves (and the hub
# checkpoints hold) the older layout; accept both, write the saved one.
_NEW_TO_SAVED = ((r"^model\.language_model\.", "language_model.model."),
                 (r"^model\.vision_tower\.", "vision_tower."),
                 (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
                 (r"^lm_head\.", "language_model.lm_head."))
# A tied checkpoint may still store the head; it must then equal the embedding.
TIED = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}

_VISION_LAYER = {"attn.q": "attention.q_proj", "attn.k": "attention.k_proj",
                 "attn.v": "attention.v_proj", "attn.proj": "attention.projection_layer",
                 "attn.q_norm": "attention.q_norm", "attn.k_norm": "attention.k_norm",
                 "norm1": "layernorm_before", "norm2": "layernorm_after",
                 "fc1": "mlp.fc1", "fc2": "mlp.fc2", "": ""}
_TEXT_LAYER = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj",
               "attn.v": "self_attn.v_proj", "attn.o": "self_attn.o_proj",
               "input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_OTHER = {"vision.patch_bias": "vision_tower.embeddings.patch_embeddings.projection.bias",
          "vision.final_norm": "vision_tower.layernorm",
          "projector.norm": "multi_modal_projector.layer_norm",
          "projector.linear_1": "multi_modal_projector.linear_1",
          "projector.linear_2": "multi_modal_projector.linear_2",
          "language.embed.embedding": "language_model.model.embed_tokens.weight",
          "language.norm": "language_model.model.norm",
          "language.lm_head": "language_model.lm_head"}
_SPECIAL = {"vision.cls_token": Key("vision_tower.embeddings.cls_token", lead=2),
            "vision.mask_token": Key("vision_tower.embeddings.mask_token", lead=2),
            "vision.position_embeddings": Key("vision_tower.embeddings.position_embeddings", lead=1),
            "vision.patch_kernel": Key("vision_tower.embeddings.patch_embeddings.projection.weight",
                                       perm=(2, 3, 1, 0)),  # torch conv [out, in, kh, kw]
            "vision.layers.lambda_1": "vision_tower.encoder.layer.{i}.lambda_1",
            "vision.layers.lambda_2": "vision_tower.encoder.layer.{i}.lambda_2"}


def normalize_key(key: str) -> str:
    for pattern, repl in _NEW_TO_SAVED:
        key = re.sub(pattern, repl, key)
    return key


def torch_key(path: tuple[str, ...]) -> str | Key:
    name = ".".join(path)
    module, leaf = name.rpartition(".")[0], path[-1]
    if name in _SPECIAL:
        return _SPECIAL[name]
    if name in _OTHER:
        return _OTHER[name]
    if module.startswith("vision.layers."):
        base = "vision_tower.encoder.layer.{i}." + _VISION_LAYER[module[len("vision.layers."):]]
    elif module.startswith("language.layers."):
        base = "language_model.model.layers.{i}." + _TEXT_LAYER[module[len("language.layers."):]]
    else:
        base = _OTHER[module]
    return f"{base}.{'weight' if leaf == 'kernel' else leaf}"
