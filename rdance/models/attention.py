"""Softmax attention, one function for every model, with implementations chosen by name: the one
vocabulary of the config key ``attention`` (``generator.attention``, ``reward.attention``,
``rm.attention``).

``attend(q, k, v)`` takes [batch, length, heads, head_dim] arrays; K/V may have fewer heads than Q
(grouped-query attention: query head h reads KV head h // (heads // kv_heads)). A ``mask`` (bool,
True = attend) and a ``bias`` (added to the scaled logits) broadcast to [batch, heads, q, k];
``causal`` lets query i see keys 0..i (top-left aligned, as ``jnp.tril``).

- ``xla``: the logits [batch, heads, q, k] in float32, softmax in float32, cast back: the CPU
  default and what the parity tests compare against.
- ``chunked``: the same function over query chunks and, inside each, key chunks with an online
  softmax, each chunk rematerialised in the backward pass: peak score memory is one
  q_chunk x k_chunk block per head instead of q x k. Lengths need not divide the chunks.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation='cudnn')`` on a GPU (float16/bfloat16,
  head_dim up to 128, masks but no bias; not run in this project's tests, which have no GPU).
- ``splash``: jax's Pallas splash-attention kernel on a TPU (no bias; masks that are causal and/or
  key padding only).
- ``auto``: splash on TPU, cudnn on GPU, xla on CPU; where the chosen kernel cannot do what a call
  asks (T5's relative bias, float32 on cudnn, a dense mask on splash) that call uses xla, and the
  reason is logged once.

An implementation name may carry chunk sizes for 'chunked', ``"chunked:Q:K"`` (:func:`spec` builds
it from the config keys ``attention_q_chunk`` / ``attention_k_chunk`` beside ``attention``).

**Sequence (context) sharding.** When a step is traced under
``rdance.core.sharding.activations_on(mesh, rules)`` and the rules map the logical axis ``'tokens'``
to mesh axes (e.g. ``('tokens', 'fsdp')``), each call runs in a ``shard_map``: every device keeps
its slice of the queries along the token axis (batch over the remaining data-parallel axes, heads
over ``'tensor'`` where they divide), all-gathers K and V along the token axis, and runs the chosen
implementation on its query slice (causal masks offset by the slice's position; masks and biases
with a query axis sliced with it). The backward of the all-gather is a reduce-scatter of dK/dV.
Score memory per device is (q / n) x k; K/V memory is the whole sequence's (not ring attention).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math

import jax
import jax.numpy as jnp

from rdance.core import sharding
from rdance.core.config_checks import ConfigValueError

IMPLS = ("auto", "xla", "chunked", "cudnn", "splash")
Q_CHUNK = 512
K_CHUNK = 512
SPLASH_BLOCK = 128
SPLASH_INTERPRET = False   # tests: run the Pallas kernel in interpret mode (on CPU)

_log = logging.getLogger(__name__)
_said: set[str] = set()
# The platform 'auto' chooses for; None: JAX's default backend. The fit check compiles for a TPU
# topology on a CPU host and sets it to 'tpu'.
_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_platform", default=None)


class Unsupported(ValueError):
    """An implementation asked for something it cannot do (the message says what and what to use)."""


def parse(name: str) -> tuple[str, int | None, int | None]:
    """(implementation, q_chunk, k_chunk) of a name, ``"chunked:Q:K"`` giving chunk sizes; a
    config error listing the valid names for anything else."""
    base, *chunks = str(name).split(":")
    if base not in IMPLS:
        raise ConfigValueError(f"unknown attention {name!r}; choose one of {', '.join(IMPLS)}")
    if not chunks:
        return base, None, None
    if base != "chunked" or len(chunks) != 2 or not all(c.isdigit() and int(c) > 0 for c in chunks):
        raise ConfigValueError(f"attention {name!r}: chunk sizes go with 'chunked' only, as 'chunked:Q:K' "
                               f"with Q and K positive whole numbers")
    return base, int(chunks[0]), int(chunks[1])


def check(name: str) -> str:
    """``name`` if it is an implementation (with chunk sizes: ``chunked:Q:K``); a config error
    listing the valid names otherwise."""
    parse(name)
    return name


def spec(name: str = "auto", q_chunk: int | None = None, k_chunk: int | None = None) -> str:
    """The implementation name a model takes from the config keys ``attention``,
    ``attention_q_chunk`` and ``attention_k_chunk``: ``chunked:Q:K`` for 'chunked' (a size left out
    (None) keeps its default, :data:`Q_CHUNK` / :data:`K_CHUNK`); other implementations have no
    chunks and ignore them. Sizes are checked (whole numbers >= 1)."""
    base = parse(name)[0]
    for key, value in (("attention_q_chunk", q_chunk), ("attention_k_chunk", k_chunk)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigValueError(f"config key {key}={value!r} is out of range: it must be a whole number >= 1 "
                                   f"(queries / keys per chunk of attention 'chunked')")
    if base != "chunked" or (q_chunk is None and k_chunk is None):
        return name
    _, named_q, named_k = parse(name)
    return f"chunked:{q_chunk or named_q or Q_CHUNK}:{k_chunk or named_k or K_CHUNK}"


def from_config(section) -> str:
    """:func:`spec` of a config section's ``attention``, ``attention_q_chunk``, ``attention_k_chunk``."""
    return spec(section.get("attention", "auto") or "auto", section.get("attention_q_chunk"),
                section.get("attention_k_chunk"))


@contextlib.contextmanager
def target_platform(platform: str | None):
    """Within the block, 'auto' chooses for ``platform`` ('cpu', 'gpu', 'tpu') instead of the
    default backend (compiling for a TPU topology from a CPU host)."""
    token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def platform() -> str:
    return _PLATFORM.get() or jax.default_backend()


def choose(name: str = "auto", plat: str | None = None) -> str:
    """The implementation ``name`` stands for on ``plat`` (default: :func:`platform`)."""
    name = parse(name)[0]
    if name != "auto":
        return name
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}.get(plat or platform(), "xla")


def attend(q, k, v, *, bias=None, mask=None, causal: bool = False, scale: float | None = None,
           impl: str = "auto", q_chunk: int | None = None, k_chunk: int | None = None):
    """Softmax(q k^T * scale + bias, masked) v over [B, S, H, D]; returns [B, Sq, H, D] in q's dtype.

    ``scale`` defaults to head_dim ** -0.5 (T5 passes 1.0). ``impl`` is one of :data:`IMPLS`
    (``chunked:Q:K`` with chunk sizes); ``q_chunk``/``k_chunk`` size the chunks of 'chunked' (over
    the name's; default :data:`Q_CHUNK`, :data:`K_CHUNK`). Under a mesh whose rules shard
    ``'tokens'`` the call is sequence-sharded (module docstring).
    """
    b, t, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % k.shape[2]:
        raise ValueError(f"attend: q {q.shape}, k {k.shape}, v {v.shape}: expected [B, S, H, D] with "
                         f"K/V heads dividing H")
    scale = d ** -0.5 if scale is None else scale
    base, named_q, named_k = parse(impl)
    name = choose(base)
    seq = _sequence_layout(q, k)
    if name in ("cudnn", "splash"):
        why = (_cudnn_unsupported if name == "cudnn" else _splash_unsupported)(q, k, bias, mask)
        if not why and seq is not None and causal:   # both kernels' causal masks start at query 0
            why = "has no causal mask offset by a sequence shard's position (sequence sharding)"
        if why:
            if base != "auto":
                raise Unsupported(f"attention {name!r}: {why}; use 'auto' (falls back to xla), "
                                  f"'xla' or 'chunked' for this model")
            _say_once(f"attention auto: {name} {why}; this call uses xla")
            name = "xla"
    chunks = (q_chunk or named_q or Q_CHUNK, k_chunk or named_k or K_CHUNK)
    if seq is not None:
        return _sequence_sharded(q, k, v, bias, mask, causal, scale, name, chunks, seq)
    return _local(q, k, v, bias, mask, causal, scale, name, chunks)


def _local(q, k, v, bias, mask, causal, scale, name, chunks, q_offset=0, in_shard_map=False):
    """The implementation ``name`` on these arrays (one device's, inside a shard_map, where the
    queries start at position ``q_offset`` of the sequence)."""
    if name == "xla":
        return _xla(q, k, v, bias, mask, causal, scale, q_offset)
    if name == "chunked":
        return _chunked(q, k, v, bias, mask, causal, scale, *chunks, q_offset)
    if name == "cudnn":
        return _cudnn(q, k, v, bias, mask, causal, scale)
    return _splash(q, k, v, mask, causal, scale, shard=not in_shard_map)


def _sequence_layout(q, k):
    """(mesh, batch axes, token axes, heads axis) when the activation rules shard the token axis
    and this call's lengths divide it; None otherwise (the call runs unsharded)."""
    mesh, seq_axes = sharding.sequence_axes()
    if mesh is None or not seq_axes:
        return None
    parts = math.prod(mesh.shape[a] for a in seq_axes)
    b, t, h, _ = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if t % parts or s % parts:
        _say_once(f"attention: query length {t} / key length {s} do not divide the {parts} sequence "
                  f"shards over {seq_axes}; such calls run with the token axis unsharded")
        return None
    batch = tuple(a for a in sharding.BATCH_AXES if a not in seq_axes and mesh.shape[a] > 1)
    if b % math.prod(mesh.shape[a] for a in batch):
        batch = ()
    heads = "tensor" if ("tensor" not in seq_axes and mesh.shape["tensor"] > 1
                         and h % mesh.shape["tensor"] == 0 and kvh % mesh.shape["tensor"] == 0) else None
    return mesh, batch or None, seq_axes if len(seq_axes) > 1 else seq_axes[0], heads


def _sequence_sharded(q, k, v, bias, mask, causal, scale, name, chunks, layout):
    """Queries split along the token axis over the mesh; K/V all-gathered along it in the
    shard_map; masks and biases split along whichever of their axes the queries' split matches."""
    from jax.sharding import PartitionSpec as P
    mesh, batch, seq, heads = layout
    b, t, h, _ = q.shape
    qspec = P(batch, seq, heads, None)

    def side_spec(x):   # a mask or bias as [B|1, H|1, Tq|1, Tk|1]
        return P(batch if x.shape[0] == b and b > 1 else None, heads if x.shape[1] == h and h > 1 else None,
                 seq if x.shape[2] == t and t > 1 else None, None)

    bias, mask = _as4(bias), _as4(mask)
    extras = [x for x in (bias, mask) if x is not None]

    def run(q, k, v, *extras):
        k, v = (jax.lax.all_gather(x, seq, axis=1, tiled=True) for x in (k, v))
        it = iter(extras)
        local_bias = next(it) if bias is not None else None
        local_mask = next(it) if mask is not None else None
        offset = jax.lax.axis_index(seq) * q.shape[1]
        return _local(q, k, v, local_bias, local_mask, causal, scale, name, chunks, offset, in_shard_map=True)

    return jax.shard_map(run, mesh=mesh, in_specs=(qspec, qspec, qspec, *map(side_spec, extras)),
                         out_specs=qspec, check_vma=False)(q, k, v, *extras)


def score_bytes(batch: int, heads: int, q_len: int, k_len: int, impl: str = "xla",
                q_chunk: int | None = None, k_chunk: int | None = None) -> int:
    """Float32 score elements alive at once in one call's forward, in bytes (a model's estimate)."""
    _, named_q, named_k = parse(impl)
    if choose(impl) == "chunked":
        q_len = min(q_len, q_chunk or named_q or Q_CHUNK)
        k_len = min(k_len, k_chunk or named_k or K_CHUNK)
    return 4 * batch * heads * q_len * k_len


def _say_once(message: str):
    if message not in _said:
        _said.add(message)
        _log.warning(message)


def _grouped(x, kv_heads: int, groups: int):
    """A mask or bias broadcastable to [B, H, Tq, Tk] as [B|1, K|1, G|1, Tq|1, Tk|1]."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.ndim > 4:
        raise ValueError(f"attend: mask/bias of shape {x.shape} must broadcast to [B, H, Tq, Tk]")
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    if x.shape[1] == 1:
        return x[:, :, None]
    if x.shape[1] != kv_heads * groups:
        raise ValueError(f"attend: mask/bias heads axis {x.shape[1]} is neither 1 nor {kv_heads * groups}")
    return x.reshape(x.shape[0], kv_heads, groups, *x.shape[2:])


def _causal(t: int, s: int, q_offset=0):
    """[t, s]: query i (at position q_offset + i) sees keys 0..q_offset + i."""
    return jnp.arange(s)[None, :] <= (q_offset + jnp.arange(t))[:, None]


def _xla(q, k, v, bias, mask, causal, scale, q_offset=0):
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    qg = q.reshape(b, t, kvh, g, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + _grouped(bias, kvh, g).astype(jnp.float32)
    keep = _grouped(mask, kvh, g)
    if causal:
        tril = _causal(t, s, q_offset)
        keep = tril if keep is None else keep & tril
    if keep is not None:
        logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(q.dtype))
    return out.reshape(b, t, h, d)


def _pad(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _block(x, axis: int, index, size: int):
    """Chunk ``index`` (of length ``size``) of ``x`` along ``axis``; a broadcast (length 1) axis
    is left whole."""
    if x is None or x.shape[axis] == 1:
        return x
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _chunked(q, k, v, bias, mask, causal, scale, q_chunk, k_chunk, q_offset=0):
    if q_chunk < 1 or k_chunk < 1:
        raise ValueError(f"attend: chunk sizes must be positive, got q_chunk={q_chunk}, k_chunk={k_chunk}")
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    qc, kc = min(q_chunk, t), min(k_chunk, s)
    nq, nk = -(-t // qc), -(-s // kc)
    dtype = q.dtype
    # [chunks, B, chunk, K, (G,) D]; padded keys are masked out below, padded queries dropped.
    qs = _pad(q, 1, nq * qc).reshape(b, nq, qc, kvh, g, d).swapaxes(0, 1)
    ks = _pad(k.astype(dtype), 1, nk * kc).reshape(b, nk, kc, kvh, d).swapaxes(0, 1)
    vs = _pad(v.astype(dtype), 1, nk * kc).reshape(b, nk, kc, kvh, d).swapaxes(0, 1)
    bias, mask = _grouped(bias, kvh, g), _grouped(mask, kvh, g)
    # Masks and biases are padded along the axes they span, so every chunk slice is in range.
    if bias is not None:
        bias = _pad(_pad(bias, 3, nq * qc if bias.shape[3] > 1 else 1), 4, nk * kc if bias.shape[4] > 1 else 1)
    if mask is not None:
        mask = _pad(_pad(mask, 3, nq * qc if mask.shape[3] > 1 else 1), 4, nk * kc if mask.shape[4] > 1 else 1)
    lowest = jnp.finfo(jnp.float32).min

    def key_step(carry, xs, qi, i):
        out, m, l = carry
        kj, vj, j = xs
        logits = jnp.einsum("bqkgd,bskd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
        if bias is not None:
            logits = logits + _block(_block(bias, 3, i, qc), 4, j, kc).astype(jnp.float32)
        keep = _block(_block(mask, 3, i, qc), 4, j, kc)
        if causal:
            tril = (j * kc + jnp.arange(kc))[None, :] <= (q_offset + i * qc + jnp.arange(qc))[:, None]
            keep = tril if keep is None else keep & tril
        if keep is not None:
            logits = jnp.where(keep, logits, lowest)
        if nk * kc != s:   # keys past the end weigh nothing (a masked key still does, as in xla)
            logits = jnp.where(j * kc + jnp.arange(kc) < s, logits, -jnp.inf)
        # The running max only keeps exp in range; the result does not depend on it.
        m_new = jax.lax.stop_gradient(jnp.maximum(m, logits.max(-1)))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(logits - m_new[..., None])
        l = l * corr + p.sum(-1)
        out = out * corr[..., None] + jnp.einsum("bkgqs,bskd->bkgqd", p.astype(dtype), vj,
                                                 preferred_element_type=jnp.float32)
        return (out, m_new, l), None

    def query_chunk(qi, i):
        init = (jnp.zeros((b, kvh, g, qc, d), jnp.float32), jnp.full((b, kvh, g, qc), lowest),
                jnp.zeros((b, kvh, g, qc), jnp.float32))
        step = jax.checkpoint(lambda c, xs: key_step(c, xs, qi, i))
        (out, _, l), _ = jax.lax.scan(step, init, (ks, vs, jnp.arange(nk)))
        out = (out / l[..., None]).astype(dtype)             # [B, K, G, qc, D]
        return jnp.moveaxis(out, 3, 1).reshape(b, qc, h, d)

    outs = jax.lax.map(lambda xs: jax.checkpoint(query_chunk)(*xs), (qs, jnp.arange(nq)))
    return outs.swapaxes(0, 1).reshape(b, nq * qc, h, d)[:, :t]


def _cudnn_unsupported(q, k, bias, mask) -> str | None:
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"needs float16/bfloat16 inputs, got {q.dtype}"
    if q.shape[-1] % 8 or q.shape[-1] > 128:
        return f"needs head_dim a multiple of 8 up to 128, got {q.shape[-1]}"
    if bias is not None:   # cuDNN's bias gradient exists for a few bias layouts only: not routed there
        return "is not given an additive bias here (T5's relative position bias)"
    return None


def _as4(x):
    return None if x is None else jnp.asarray(x).reshape((1,) * (4 - jnp.ndim(x)) + jnp.shape(x))


def _cudnn(q, k, v, bias, mask, causal, scale):
    del bias   # refused by _cudnn_unsupported
    mask = None if mask is None else _as4(mask).astype(bool)
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                        scale=scale, is_causal=causal, implementation="cudnn")


def _splash_unsupported(q, k, bias, mask) -> str | None:
    if sharding.activation_mesh() is None and jax.default_backend() == "tpu" and jax.device_count() > 1:
        return ("needs the mesh to shard_map over (a Pallas kernel is not partitioned by XLA): "
                "trace under rdance.core.sharding.activations_on")
    if bias is not None:
        return "has no additive bias (T5's relative position bias)"
    if mask is not None:
        shape = _as4(mask).shape
        if shape[1] != 1 or shape[2] != 1:
            return (f"takes masks that are causal and/or key padding ([B, 1, 1, Tk]) only, "
                    f"got a mask of shape {tuple(jnp.shape(mask))}")
    return None


def _splash(q, k, v, mask, causal, scale, shard: bool = True):
    """Lengths padded to the kernel's block and head_dim to 128 lanes; padded keys (and masked
    ones) get segment id 0, queries 1. Under a mesh (sharding.activations_on) the kernel runs in a
    shard_map: batch over the data-parallel axes, heads over 'tensor', where they divide."""
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    tp, sp = (-(-n // SPLASH_BLOCK) * SPLASH_BLOCK for n in (t, s))
    dp = -(-d // 128) * 128   # zero features change no logit; zero value columns are dropped
    q = _pad(_pad(q * jnp.asarray(scale, q.dtype), 1, tp), 3, dp)
    k, v = (_pad(_pad(jnp.repeat(x.astype(q.dtype), h // kvh, axis=2), 1, sp), 3, dp) for x in (k, v))
    valid = jnp.ones((b, s), bool) if mask is None else jnp.broadcast_to(_as4(mask)[:, 0, 0], (b, s))
    kv_ids = _pad(valid, 1, sp).astype(jnp.int32)
    padded = mask is not None or sp != s
    run = lambda q, k, v, kv_ids: _splash_local(q, k, v, kv_ids, causal, padded)  # noqa: E731
    mesh = sharding.activation_mesh() if shard else None
    if mesh is not None and mesh.size > 1:
        from jax.sharding import PartitionSpec as P
        batch_parts = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
        batch = sharding.BATCH_AXES if b % batch_parts == 0 else None
        heads = "tensor" if h % mesh.shape["tensor"] == 0 else None
        spec = P(batch, None, heads, None)
        run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(batch, None)), out_specs=spec,
                            check_vma=False)
    return run(q, k, v, kv_ids)[:, :t, :, :d]


def _splash_local(q, k, v, kv_ids, causal, padded):
    """The kernel on this device's [B, T, H, D] blocks (lengths and head_dim already padded)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    b, tp, h, _ = q.shape
    sp = k.shape[1]
    one = sm.CausalMask((tp, sp)) if causal else sm.FullMask((tp, sp))
    kernel = sk.make_splash_mha(sm.MultiHeadMask([one] * h), head_shards=1, q_seq_shards=1,
                                interpret=SPLASH_INTERPRET)
    q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))
    if not padded:
        out = jax.vmap(kernel)(q, k, v)
    else:
        segments = sk.SegmentIds(q=jnp.ones((b, tp), jnp.int32), kv=kv_ids)
        out = jax.vmap(lambda q, k, v, seg: kernel(q, k, v, segment_ids=seg))(q, k, v, segments)
    return out.swapaxes(1, 2)
