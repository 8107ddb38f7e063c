"""Parameters placed on an 8-device mesh at load time give the same outputs as one device."""
import jax
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.models.flux import load_t5, load_transformer
from .test_convert import inputs


def test_sharded_transformer_matches_unsharded(flux_pipe, devices, rng):
    mesh = sharding.make_mesh((2, 2, 2))
    sharded = load_transformer(flux_pipe[0] / "transformer", mesh=mesh)
    kernel = sharded.transformer_blocks.attn.to_q.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    single = load_transformer(flux_pipe[0] / "transformer")
    args = inputs(rng)
    args = {k: np.repeat(v, 4, 0) if k in ("hidden_states", "encoder_hidden_states", "pooled_projections",
                                           "timestep", "guidance") else v for k, v in args.items()}
    graphdef, state = nnx.split(sharded)
    run = jax.jit(lambda state, args: nnx.merge(graphdef, state)(**args))
    with jax.default_matmul_precision("highest"):
        batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) if v.shape[0] == 4 else v
                 for k, v in args.items()}
        ours = run(state, batch)
        ref = single(**args)
    assert np.abs(np.asarray(ours) - np.asarray(ref)).max() < 1e-5


def test_sharded_t5_matches_unsharded(flux_pipe, devices, rng):
    mesh = sharding.make_mesh((1, 4, 2))
    # The tiny vocabulary (55) does not split over 'tensor'; replicate it, as a config would.
    rules = tuple((k, None if k == "vocab" else v) for k, v in sharding.DEFAULT_RULES)
    ids = rng.integers(0, 55, (4, 12))
    with jax.default_matmul_precision("highest"):
        ours = load_t5(flux_pipe[0] / "text_encoder_2", mesh=mesh, rules=rules)(ids)
        ref = load_t5(flux_pipe[0] / "text_encoder_2")(ids)
    assert np.abs(np.asarray(ours) - np.asarray(ref)).max() < 1e-5
