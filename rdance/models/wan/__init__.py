"""Wan 2.1 (text/image to video): transformer, causal 3D VAE (vae.py), UMT5 text encoder."""
from __future__ import annotations

# ----- VAE (vae.py): diffusers' AutoencoderKLWan folder in and out ---------------------------------
from pathlib import Path

from flax import nnx

from rdance.core import sharding
from rdance.models import convert
from rdance.models.flux import config as _config
from rdance.models.wan import vae


def load_vae(path, *, mesh=None, rules=sharding.DEFAULT_RULES, **runtime) -> vae.AutoencoderKLWan:
    """The AutoencoderKLWan in ``path`` (a pipeline's vae/ folder), parameters placed on their
    shards of ``mesh`` (None: the first device); ``runtime`` sets param_dtype/dtype/remat/attention."""
    raw = _config.read_json(path)
    _config.check_type(raw, path, class_names=(vae.CLASS_NAME,))
    cfg = _config.from_dict(vae.WanVAEConfig, raw, **runtime)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: vae.AutoencoderKLWan(cfg, rngs=nnx.Rngs(0))))
    shardings = None if mesh is None else sharding.state_shardings(abstract, mesh, rules)
    return nnx.merge(graphdef, convert.load_state(path, abstract, vae.torch_key, shardings))


def export_vae(model: vae.AutoencoderKLWan, path, *, max_shard_bytes=5 * 2**30) -> Path:
    """Write ``model`` as a diffusers AutoencoderKLWan folder."""
    cfg = dict(_config.to_dict(model.cfg), _class_name=vae.CLASS_NAME)
    return convert.export(nnx.state(model, nnx.Param), path, vae.torch_key, cfg,
                          stem="diffusion_pytorch_model", max_shard_bytes=max_shard_bytes)
# ----- end VAE ------------------------------------------------------------------------------------
