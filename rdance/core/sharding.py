"""Device mesh, logical axis rules, and parameters created directly on their shards.

Every parameter carries logical axis names (``'embed'``, ``'mlp'``, ``'heads'``, ``'vocab'``,
``'layers'`` ...) in its ``out_sharding`` metadata. A rules table from the config maps each
logical name to a mesh axis (or ``None`` for replicated). A logical name that no rule mentions is
an error: silent replication of a 26B model is how one runs out of memory on a pod.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension of activations and inputs is split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]

# Defaults: FSDP over 'fsdp' on the embedding dimension, tensor parallel over 'tensor'.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("length", None),
    ("tokens", None),   # activations' sequence axis: map it to a mesh axis for sequence sharding
    ("conv", None),
    ("channels", None),
)


def with_rule(rules: Rules, name: str, target: Any) -> tuple[tuple[str, Any], ...]:
    """``rules`` with logical axis ``name`` mapped to ``target`` (added when absent): e.g.
    ``with_rule(DEFAULT_RULES, 'tokens', 'fsdp')`` turns on sequence sharding over 'fsdp'."""
    rules = tuple((k, v) for k, v in rules)
    if name not in dict(rules):
        return rules + ((name, target),)
    return tuple((k, target if k == name else v) for k, v in rules)


class ShardingError(ValueError):
    """A parameter or mesh that cannot be sharded as configured."""


def param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
    """An ``nnx.Param`` annotated with logical axes; placed later by :func:`create_sharded`."""
    axes = tuple(axes)
    if len(axes) != np.ndim(value):
        raise ShardingError(f"axes {axes} do not match a parameter of shape {np.shape(value)}")
    # Eager sharding would need a mesh at construction time; we place the whole state at once.
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill in the single ``-1`` entry so that the product equals ``num_devices``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ShardingError(f"mesh shape {shape} must have one entry per axis {MESH_AXES}")
    if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ShardingError(f"mesh shape {shape}: use positive sizes and at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ShardingError(f"mesh shape {shape} does not divide {num_devices} devices")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ShardingError(
            f"mesh shape {shape} uses {math.prod(shape)} devices but {num_devices} are present; "
            "set one axis to -1 to take the rest")
    return shape


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over axes ``('data', 'fsdp', 'tensor')``; ``-1`` takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(shape, len(devices))
    # create_device_mesh orders devices so that the innermost axes sit on the fastest links.
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(names: Sequence[str | None], rules: Rules) -> P:
    """Map logical axis names to a PartitionSpec; an unknown name is an error."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ShardingError(
                f"no sharding rule for logical axis '{name}'; known axes: {sorted(table)}. "
                f"Add ('{name}', <mesh axis or None>) to config.mesh.rules")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        # A mesh axis may appear once per spec: later dimensions fall back to replication.
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*spec)


def path_str(path: tuple) -> str:
    """'blocks/0/kernel' from a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _axes_of(path: tuple, var: nnx.Variable) -> tuple | None:
    axes = var.get_metadata().get("out_sharding")
    if axes is None and isinstance(var, nnx.Param):
        raise ShardingError(
            f"parameter {path_str(path)} has no logical axes; create it with "
            "rdance.core.sharding.param(value, axes)")
    return axes


def _check_divisible(path, shape, spec: P, mesh: Mesh):
    for dim, entry in zip(shape, tuple(spec)):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = math.prod(mesh.shape[a] for a in axes)
        if dim % size:
            raise ShardingError(
                f"parameter {path_str(path)} of shape {tuple(shape)} cannot be split "
                f"{size} ways along {axes} (spec {spec}); change config.mesh.rules or the mesh shape")


def state_specs(state: nnx.State, rules: Rules) -> nnx.State:
    """PartitionSpecs for every variable of an (abstract) state."""
    def spec(path, var):
        axes = _axes_of(path, var)
        return var.replace(logical_to_spec(axes, rules) if axes else P())
    return jax.tree.map_with_path(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """NamedShardings for every variable of an (abstract) state, checked for divisibility."""
    def sharding(path, var):
        axes = _axes_of(path, var)
        spec = logical_to_spec(axes, rules) if axes else P()
        _check_divisible(path, var.value.shape, spec, mesh)
        return var.replace(NamedSharding(mesh, spec))
    return jax.tree.map_with_path(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules) -> nnx.Module:
    """Build a module with every parameter created directly on its shards.

    ``make_model`` is traced twice: once under ``eval_shape`` (no memory) to learn the shapes,
    then inside a jit whose ``out_shardings`` place each parameter, so no host or device ever
    holds the whole model.
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    init = jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)
    return nnx.merge(graphdef, init())


def sharded_shapes(make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules):
    """(graphdef, parameters as a pure dict of ShapeDtypeStructs sharded on ``mesh`` by ``rules``)
    of the module ``make_model()`` builds; shapes only, nothing is allocated."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make_model), nnx.Param)
    shardings = nnx.to_pure_dict(state_shardings(abstract, mesh, rules))
    return graphdef, with_shardings(nnx.to_pure_dict(abstract), shardings)


def with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree``'s arrays (or structs) placed by ``shardings``: what an
    ahead-of-time compile or a checkpoint restore takes, with nothing allocated."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def shardings_of(tree: Any) -> Any:
    """The sharding of every array (or sharded ShapeDtypeStruct) in ``tree``."""
    return jax.tree.map(lambda x: x.sharding, tree)


def spec_of(tree: Any) -> Any:
    """Sharded ShapeDtypeStructs of the arrays in ``tree``, placed where they are."""
    return with_shardings(tree, shardings_of(tree))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble global arrays from each host's slice of the batch (leading dimension)."""
    def to_global(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return jax.tree.map(to_global, local_batch)


# The mesh whose data-parallel axes split activations' batch dimension while a step is traced,
# and the mesh axes its rules put activations' token axis on (sequence sharding; () for none).
_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activation_mesh", default=None)
_TOKEN_AXES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("token_axes", default=())


def token_axes(rules: Rules | None, mesh: Mesh | None = None) -> tuple[str, ...]:
    """The mesh axes ``rules`` map the logical axis ``'tokens'`` to (activations' sequence axis),
    () when they leave it unsharded or do not name it; a ShardingError for an axis the mesh lacks."""
    target = dict(rules or ()).get("tokens")
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    unknown = [a for a in axes if a not in (mesh.axis_names if mesh is not None else MESH_AXES)]
    if unknown:
        raise ShardingError(f"rule ('tokens', {target!r}) names mesh axes {unknown} the mesh does not have "
                            f"(axes {MESH_AXES}); use one of them or None")
    return axes


@contextlib.contextmanager
def activations_on(mesh: Mesh, rules: Rules | None = None):
    """Trace under this so that :func:`constrain_batch` pins activations to ``mesh``'s batch axes
    and, where ``rules`` map ``'tokens'`` to mesh axes, their token axis to those (sequence
    sharding: the batch then splits over the data-parallel axes the token axis does not use, and
    rdance.models.attention runs each attention with its queries split along the tokens).

    Weights are FSDP-sharded on their embedding dimension; left alone, XLA's sharding propagation
    may follow the weights and gather the batch onto every device (on a FLUX.1-dev ReFL step,
    every chip computing the attention of all the slice's samples: 65 GiB of temporaries instead of
    a few). Each scanned layer pins its input to the batch axes, the layout FSDP intends.
    It acts while a function is traced: lower a fresh ``jax.jit`` under it, since jit's cache
    does not know the context.
    """
    axes = token_axes(rules, mesh)
    token, token_axes_token = _ACTIVATION_MESH.set(mesh), _TOKEN_AXES.set(axes)
    try:
        yield mesh
    finally:
        _TOKEN_AXES.reset(token_axes_token)
        _ACTIVATION_MESH.reset(token)


def activation_mesh() -> Mesh | None:
    """The mesh :func:`activations_on` set (None outside it): kernels that XLA cannot partition
    (Pallas) shard_map over it."""
    return _ACTIVATION_MESH.get()


def sequence_axes() -> tuple[Mesh | None, tuple[str, ...]]:
    """(the activation mesh, the mesh axes of size > 1 activations' token axis is split over):
    (None, ()) outside :func:`activations_on`, (mesh, ()) without sequence sharding."""
    mesh = _ACTIVATION_MESH.get()
    if mesh is None:
        return None, ()
    return mesh, tuple(a for a in _TOKEN_AXES.get() if mesh.shape[a] > 1)


def constrain_batch(tree):
    """Arrays of ``tree`` with their leading (batch) axis split over the data-parallel axes of the
    mesh :func:`activations_on` set and, with sequence sharding, the token axis of [batch, tokens,
    features] arrays over the rules' token axes; unchanged outside it. An axis that does not
    divide is left unsplit."""
    mesh, seq = sequence_axes()
    if mesh is None:
        return tree
    batch_axes = tuple(a for a in BATCH_AXES if a not in seq)
    parts = math.prod(mesh.shape[a] for a in batch_axes)
    seq_parts = math.prod(mesh.shape[a] for a in seq)

    def constrain(x):
        if x.ndim == 0:
            return x
        spec = [batch_axes if parts > 1 and x.shape[0] % parts == 0 else None] + [None] * (x.ndim - 1)
        if seq and x.ndim == 3 and x.shape[1] % seq_parts == 0:
            spec[1] = seq if len(seq) > 1 else seq[0]
        if spec == [None] * x.ndim:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
    return jax.tree.map(constrain, tree)
