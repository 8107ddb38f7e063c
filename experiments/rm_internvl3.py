"""Reward model from an InternVL3 checkpoint (the paper's model-scaling axis, 1B to 78B).

    python -m rdance.run.train_reward --config=experiments/rm_internvl3.py:8b --workdir=gs://bucket/rm-8b \
        --config.rm.pretrained=/ckpt/InternVL3-8B-hf --config.data.train=tfds:/data/tfds:pickapic_v2 \
        --config.data.eval_sets=in_domain=tfds:/data/tfds:pickapic_v2:test,ood=tfds:/data/tfds:hpdv2:test

Will it fit? Check on a CPU before renting (no weights needed: the architecture below is used):

    python -m rdance.run.fit_check --entry=rdance.run.train_reward --config=experiments/rm_internvl3.py:38b \
        --topology=v5p:4x4x4 --config.rm.pretrained=""

The argument picks the size: 1b, 2b, 8b, 14b, 38b, 78b. ``model.architecture`` holds each
checkpoint's config.json fields, used when ``rm.pretrained`` is empty (fit checks, or training
from scratch at that shape).
"""
import ml_collections

from experiments import rm_smoke

VIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                norm_type="layer_norm", use_qk_norm=False, use_mean_pooling=True)
VIT_6B = dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
              norm_type="rms_norm", use_qk_norm=True, use_mean_pooling=False)
QWEN = {  # hidden, layers, heads, kv heads, intermediate, tied embeddings
    "1b": (896, 24, 14, 2, 4864, True), "2b": (1536, 28, 12, 2, 8960, True),
    "8b": (3584, 28, 28, 4, 18944, False), "14b": (5120, 48, 40, 8, 13824, False),
    "38b": (5120, 64, 40, 8, 27648, False), "78b": (8192, 80, 64, 8, 29568, False),
}
# Meshes that divide every sharded dimension (the 6B vision tower has 25 heads: no tensor split).
MESH = {"1b": (1, -1, 1), "2b": (1, -1, 1), "8b": (1, -1, 1), "14b": (1, -1, 1),
        "38b": (1, -1, 1), "78b": (1, -1, 1)}


def architecture(size: str) -> dict:
    hidden, layers, heads, kv, mlp, tied = QWEN[size]
    vision = dict(VIT_6B if size in ("38b", "78b") else VIT_300M, image_size=[448, 448], patch_size=[14, 14],
                  model_type="internvl_vision", layer_scale_init_value=0.1)
    text = dict(model_type="qwen2", vocab_size=151674, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=mlp,
                max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                tie_word_embeddings=tied)
    return dict(model_type="internvl", downsample_ratio=0.5, projector_hidden_act="gelu",
                tie_word_embeddings=tied, vision_feature_layer=-1, vision_feature_select_strategy="default",
                vision_config=vision, text_config=text)


def get_config(arg: str | None = "8b") -> ml_collections.ConfigDict:
    size = (arg or "8b").lower()
    if size not in QWEN:
        raise ValueError(f"size {size!r}: use one of {sorted(QWEN)}")
    c = rm_smoke.get_config()
    c.model = ml_collections.ConfigDict(dict(architecture=ml_collections.ConfigDict(architecture(size))))
    c.rm.pretrained = f"/path/to/InternVL3-{size.upper()}-hf"
    c.rm.remat = "full"
    c.rm.max_prompt_tokens = 768      # two 448px images are 2 x 258 tokens, plus the question
    c.rm.max_answer_tokens = 4
    c.data.image_size = 448
    c.data.train_pairs = 1000000
    c.data.global_batch_size = 64
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 200
    c.mesh.shape = MESH[size]
    c.train.steps = 20000
    c.train.eval_every = 1000
    c.train.checkpoint_every = 500
    return c
