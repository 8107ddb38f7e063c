"""Wan 2.1 (text/image to video): transformer, causal 3D VAE (vae.py), UMT5 text encoder.

    transformer = load_transformer("/ckpt/Wan2.1-T2V-1.3B-Diffusers/transformer")
    text_encoder = load_umt5("/ckpt/Wan2.1-T2V-1.3B-Diffusers/text_encoder")
    vae = load_vae("/ckpt/Wan2.1-T2V-1.3B-Diffusers/vae")
    export_transformer(transformer, "/out/transformer")   # diffusers loads it back

Every loader takes ``mesh``/``rules`` to place parameters directly on their shards, and
``param_dtype``/``dtype``/``remat``/``attention`` overrides for the runtime-only config fields.
"""
from __future__ import annotations

from pathlib import Path

from flax import nnx

from rdance.core import sharding
from rdance.models import convert
from rdance.models.flux import config, load_model
from rdance.models.wan import transformer, umt5, vae


def _export_diffusers(model, path, torch_key, class_name, max_shard_bytes) -> Path:
    cfg = dict(config.to_dict(model.cfg), _class_name=class_name)
    return convert.export(nnx.state(model, nnx.Param), path, torch_key, cfg,
                          stem="diffusion_pytorch_model", max_shard_bytes=max_shard_bytes)


def load_transformer(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> transformer.WanTransformer:
    """A diffusers WanTransformer3DModel folder (``<pipeline>/transformer``), T2V or I2V."""
    return load_model(path, transformer.WanConfig, transformer.WanTransformer, transformer.torch_key,
                       dict(class_names=(transformer.CLASS_NAME,)), mesh, rules, runtime,
                       unused=transformer.UNUSED_KEYS)


def load_umt5(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> umt5.UMT5Encoder:
    """A transformers UMT5EncoderModel folder (``<pipeline>/text_encoder``)."""
    return load_model(path, umt5.UMT5Config, umt5.UMT5Encoder, umt5.torch_key,
                       dict(model_types=umt5.MODEL_TYPES), mesh, rules, runtime, tied=umt5.TIED)


def load_vae(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> vae.AutoencoderKLWan:
    """A diffusers AutoencoderKLWan folder (``<pipeline>/vae``)."""
    return load_model(path, vae.WanVAEConfig, vae.AutoencoderKLWan, vae.torch_key,
                       dict(class_names=(vae.CLASS_NAME,)), mesh, rules, runtime)


def export_transformer(model: transformer.WanTransformer, path, *, max_shard_bytes=5 * 2**30) -> Path:
    """Write ``model`` as a diffusers WanTransformer3DModel folder."""
    return _export_diffusers(model, path, transformer.torch_key, transformer.CLASS_NAME, max_shard_bytes)


def export_vae(model: vae.AutoencoderKLWan, path, *, max_shard_bytes=5 * 2**30) -> Path:
    """Write ``model`` as a diffusers AutoencoderKLWan folder."""
    return _export_diffusers(model, path, vae.torch_key, vae.CLASS_NAME, max_shard_bytes)


def export_umt5(model: umt5.UMT5Encoder, path, *, max_shard_bytes=5 * 2**30) -> Path:
    """Write ``model`` as a transformers UMT5EncoderModel folder."""
    cfg = dict(config.to_dict(model.cfg), model_type="umt5", architectures=["UMT5EncoderModel"],
               is_encoder_decoder=False, use_cache=False)
    return convert.export(nnx.state(model, nnx.Param), path, umt5.torch_key, cfg, stem="model",
                          max_shard_bytes=max_shard_bytes)
