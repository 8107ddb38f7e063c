"""The UMT5 encoder (transformers' ``UMT5EncoderModel``) that gives Wan its per-token text features.

UMT5 is T5 (rdance.models.flux.t5) except that EVERY layer owns its relative-attention-bias
table, where T5 shares block 0's: here each stacked block holds its table and turns the
bucketed relative distances (computed once on the host) into its own bias inside the scan.
Attention, feed-forward and norms are T5's modules, reused unchanged.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from rdance.models import attention as attnlib
from rdance.models.flux import config as cfglib
from rdance.models.flux import t5
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.layers import Embed, RMSNorm

MODEL_TYPES = ("umt5",)
TIED = t5.TIED


@dataclasses.dataclass(frozen=True)
class UMT5Config(t5.T5Config):
    """Same fields as T5's (config.json uses the same names); defaults of umt5-xxl, Wan's encoder."""
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64


class Block(t5.Block):
    """A T5 block with its own relative_attention_bias table [num_buckets, num_heads]."""

    def __init__(self, cfg: UMT5Config, rngs):
        super().__init__(cfg, rngs)
        self.relative_attention_bias = Embed(cfg.relative_attention_num_buckets, cfg.num_heads, rngs=rngs,
                                             axes=(None, "heads"), param_dtype=jnp.dtype(cfg.param_dtype))

    def __call__(self, x, buckets, mask_bias):
        bias = jnp.transpose(self.relative_attention_bias.embedding[...][buckets], (2, 0, 1))[None]
        return super().__call__(x, bias.astype(jnp.float32) + mask_bias)


class UMT5Encoder(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        attnlib.check(cfg.attention)
        cfg.activation  # noqa: B018  an unsupported feed_forward_proj fails here
        self.cfg = cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=jnp.dtype(cfg.param_dtype))
        self.block = make_stack(lambda r: Block(cfg, r), cfg.num_layers, rngs)
        self.final_layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(self, input_ids, attention_mask=None):
        """input_ids [B, L] (attention_mask [B, L], 1 = token, 0 = padding) -> last_hidden_state
        [B, L, d_model], as ``UMT5EncoderModel(...).last_hidden_state``."""
        cfg = self.cfg
        buckets = jnp.asarray(t5.relative_buckets(input_ids.shape[1], cfg.relative_attention_num_buckets,
                                                  cfg.relative_attention_max_distance))
        if attention_mask is None:
            mask_bias = jnp.zeros((1, 1, 1, 1), jnp.float32)
        else:
            mask_bias = jnp.where(jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0,
                                  jnp.finfo(jnp.float32).min)
        x = self.shared(input_ids).astype(cfglib.dtype_of(cfg.dtype) or jnp.dtype(cfg.param_dtype))
        x = run_stack(self.block, x, buckets, mask_bias, remat=cfg.remat)
        return self.final_layer_norm(x)


def torch_key(path: tuple[str, ...]) -> str:
    if path[:2] == ("block", "relative_attention_bias"):
        return "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"
    return t5.torch_key(path)
