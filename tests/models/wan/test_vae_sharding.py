"""The Wan VAE's decode under sequence sharding (rule ('tokens', 'fsdp'), 2 of the 8 fake CPU
devices): its activations split along their width over 'fsdp' (XLA partitions the convolutions
spatially), and the decoded clip and its gradient with respect to the latents equal the
unsharded ones (float32; sharded and unsharded differ in summation order only)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rdance.core import sharding
from rdance.models.wan.vae import AutoencoderKLWan, WanVAEConfig


def _width_splits(jaxpr_text: str) -> int:
    return jaxpr_text.count("spec=P(None, None, None, 'fsdp', None)")


def test_decode_split_by_width_matches_unsplit(devices):
    cfg = WanVAEConfig(base_dim=4, z_dim=4, dim_mult=(1, 1), num_res_blocks=0, temperal_downsample=(True,),
                       latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4, remat="none", attention="xla")
    graphdef, params = nnx.split(AutoencoderKLWan(cfg, rngs=nnx.Rngs(0)))
    r = np.random.default_rng(0)
    z = jnp.asarray(r.normal(size=(1, 4, 2, 2, 4)), jnp.float32)   # 2 latent frames: the first chunk, a scanned one
    weights = jnp.asarray(r.normal(size=(1, 3, 3, 4, 8)), jnp.float32)

    def loss(z):
        video = nnx.merge(graphdef, params).decode(z, clamp=False)
        return jnp.sum(weights * video), video

    step = jax.value_and_grad(loss, has_aux=True)
    (_, video_ref), grad_ref = jax.jit(step)(z)
    mesh = sharding.make_mesh((1, 2, 1), devices[:2])
    with sharding.activations_on(mesh, sharding.with_rule(sharding.DEFAULT_RULES, "tokens", "fsdp")):
        # Fresh functions: jit's and make_jaxpr's caches do not know the activation context.
        splits = _width_splits(str(jax.make_jaxpr(lambda z: step(z))(z)))
        (_, video_got), grad_got = jax.jit(lambda z: step(z))(z)

    assert splits >= 10   # every block's output and cache, in the first chunk and in the scanned one (102)
    assert video_got.shape == (1, 3, 3, 4, 8)
    np.testing.assert_allclose(video_got, video_ref, atol=1e-5)
    np.testing.assert_allclose(grad_got, grad_ref, atol=1e-4, rtol=1e-4)
