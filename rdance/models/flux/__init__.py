"""FLUX (text to image) in Flax NNX, loaded from diffusers-layout folders.

    configs = pipeline_configs("/ckpt/FLUX.1-dev")     # model_index.json folder: config dicts
    transformer = load_transformer("/ckpt/FLUX.1-dev/transformer")
    vae = load_vae("/ckpt/FLUX.1-dev/vae")             # .encode / .decode on NCHW arrays
    export_transformer(transformer, "/out/transformer")  # diffusers loads it back

Every loader takes ``mesh``/``rules`` to place parameters directly on their shards, and
``param_dtype``/``dtype``/``remat`` overrides for the runtime-only config fields. This package
holds the modules and their conversion only; the whole pipeline (sampling, the scheduler's
settings, fine-tuning) is :class:`rdance.diffusion.flux_generator.FluxGenerator`.
"""
from __future__ import annotations

from pathlib import Path

from flax import nnx

from rdance.core import sharding
from rdance.models import convert
from rdance.models.flux import clip, config, t5, transformer, vae
from rdance.models.flux.text import TextEncoders

__all__ = ["load_transformer", "load_vae", "load_text_encoders", "pipeline_configs", "export_transformer",
           "export_vae", "export_t5", "TextEncoders", "PIPELINE_FILES"]

# A FluxPipeline folder's component config files, by component.
PIPELINE_FILES = {"transformer": "transformer/config.json", "vae": "vae/config.json",
                  "scheduler": "scheduler/scheduler_config.json", "text_encoder": "text_encoder/config.json",
                  "text_encoder_2": "text_encoder_2/config.json"}
PIPELINE_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")


def load_model(path, cfg_cls, model_cls, torch_key, check, mesh, rules, runtime, **convert_kw):
    """A diffusers/transformers model folder (config.json + safetensors) as ``model_cls``, its config
    checked by ``check``, parameters placed on their shards as they are read (Wan's loaders too)."""
    raw = config.read_json(path)
    config.check_type(raw, path, **check)
    cfg = config.from_dict(cfg_cls, raw, **runtime)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))))
    shardings = None if mesh is None else sharding.state_shardings(abstract, mesh, rules)
    return nnx.merge(graphdef, convert.load_state(path, abstract, torch_key, shardings, **convert_kw))


def load_transformer(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> transformer.FluxTransformer:
    return load_model(path, transformer.FluxConfig, transformer.FluxTransformer, transformer.torch_key,
                 dict(class_names=(transformer.CLASS_NAME,)), mesh, rules, runtime)


def load_vae(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> vae.AutoencoderKL:
    return load_model(path, vae.VAEConfig, vae.AutoencoderKL, vae.torch_key,
                 dict(class_names=(vae.CLASS_NAME,)), mesh, rules, runtime)


def load_t5(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> t5.T5Encoder:
    return load_model(path, t5.T5Config, t5.T5Encoder, t5.torch_key, dict(model_types=t5.MODEL_TYPES),
                 mesh, rules, runtime, tied=t5.TIED)


def load_clip(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> clip.CLIPTextModel:
    return load_model(path, clip.CLIPTextConfig, clip.CLIPTextModel, clip.torch_key,
                 dict(model_types=clip.MODEL_TYPES), mesh, rules, runtime, rename=clip.normalise_key)


def load_text_encoders(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> TextEncoders:
    """CLIP from text_encoder/, T5 from text_encoder_2/, tokenizers from tokenizer{,_2}/."""
    from transformers import AutoTokenizer  # host-side tokenisation only; no torch models
    path = Path(path)
    return TextEncoders(load_clip(path / "text_encoder", mesh=mesh, rules=rules, **runtime),
                        load_t5(path / "text_encoder_2", mesh=mesh, rules=rules, **runtime),
                        AutoTokenizer.from_pretrained(path / "tokenizer"),
                        AutoTokenizer.from_pretrained(path / "tokenizer_2"))


def pipeline_configs(path, transformer_path=None) -> dict[str, dict]:
    """A FluxPipeline folder's component configs (``PIPELINE_FILES``' keys, the scheduler's
    settings included), read after checking its model_index.json; ``transformer_path`` is a
    fine-tuned transformer folder to use in place of the pipeline's."""
    path = Path(path)
    index = config.read_json(path, "model_index.json")
    if index.get("_class_name") not in PIPELINE_CLASSES:
        raise config.CheckpointTypeError(f"{path} is a {index.get('_class_name')} folder, not a FluxPipeline")
    configs = {key: config.read_json(path / Path(name).parent, Path(name).name)
               for key, name in PIPELINE_FILES.items()}
    if transformer_path:
        configs["transformer"] = config.read_json(transformer_path)
    return configs


def _export(model, path, torch_key, cfg, stem="diffusion_pytorch_model", max_shard_bytes=5 * 2**30) -> Path:
    return convert.export(nnx.state(model, nnx.Param), path, torch_key, cfg, stem=stem,
                          max_shard_bytes=max_shard_bytes)


def export_transformer(model: transformer.FluxTransformer, path, **kw) -> Path:
    """Write ``model`` as a diffusers FluxTransformer2DModel folder."""
    cfg = dict(config.to_dict(model.cfg), _class_name=transformer.CLASS_NAME)
    return _export(model, path, transformer.torch_key, cfg, **kw)


def export_vae(model: vae.AutoencoderKL, path, **kw) -> Path:
    cfg = dict(config.to_dict(model.cfg), _class_name=vae.CLASS_NAME)
    return _export(model, path, vae.torch_key, cfg, **kw)


def export_t5(model: t5.T5Encoder, path, **kw) -> Path:
    """Write ``model`` as a transformers T5EncoderModel folder."""
    cfg = dict(config.to_dict(model.cfg), model_type="t5", architectures=["T5EncoderModel"],
               is_encoder_decoder=False, use_cache=False)
    return _export(model, path, t5.torch_key, cfg, stem="model", **kw)
