"""Wan 2.1 VAE parity with diffusers' AutoencoderKLWan on a tiny random model saved with
save_pretrained: encode (the first frame, then 4-frame chunks), decode (one latent frame at a
time), both over several chunks with the feature cache; gradients; export; wrong folders."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from rdance.models.flux.config import CheckpointTypeError  # noqa: E402
from rdance.models.wan import export_vae, load_vae  # noqa: E402

ATOL = 1e-3
MEAN, STD = [0.1, -0.2, 0.3, 0.0], [2.0, 0.5, 1.5, 1.0]


@pytest.fixture(scope="module")
def torch_vae(tmp_path_factory):
    """(folder, torch model): two levels of temporal downsampling as Wan 2.1 has, a decoder
    narrower than the encoder, and every parameter perturbed (the RMS gammas are ones at init)."""
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(base_dim=8, decoder_base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2],
                                       num_res_blocks=1, latents_mean=MEAN, latents_std=STD).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("wan") / "vae"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def rd_vae(torch_vae):
    return load_vae(torch_vae[0], remat="none")


def _jit(model, method):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x))
    return lambda x: fn(state, x)


@pytest.mark.parametrize("frames,size", [(1, 16), (9, 16), (5, 32)])
def test_encode_matches_diffusers(torch_vae, rd_vae, frames, size):
    video = np.random.default_rng(frames).uniform(-1, 1, (2, 3, frames, size, size)).astype(np.float32)
    with torch.no_grad():
        dist = torch_vae[1].encode(torch.tensor(video)).latent_dist
    with jax.default_matmul_precision("highest"):
        mean, logvar = _jit(rd_vae, "encode")(jnp.asarray(video))
    assert mean.shape == (2, 4, 1 + (frames - 1) // 4, size // 8, size // 8)
    np.testing.assert_allclose(np.asarray(mean), dist.mean.numpy(), atol=ATOL)
    np.testing.assert_allclose(np.asarray(logvar), dist.logvar.numpy(), atol=ATOL)


@pytest.mark.parametrize("frames,size", [(1, 2), (3, 2), (2, 4)])
def test_decode_matches_diffusers(torch_vae, rd_vae, frames, size):
    z = np.random.default_rng(frames).normal(size=(2, 4, frames, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = torch_vae[1].decode(torch.tensor(z)).sample.numpy()
    with jax.default_matmul_precision("highest"):
        out = np.asarray(_jit(rd_vae, "decode")(jnp.asarray(z)))
    assert out.shape == ref.shape == (2, 3, 1 + 4 * (frames - 1), 8 * size, 8 * size)
    assert 0.05 < np.abs(ref).mean() and (np.abs(ref) < 1).mean() > 0.9   # not saturated by the clamp
    np.testing.assert_allclose(out, ref, atol=ATOL)


def test_latent_normalisation(torch_vae, rd_vae):
    """encode_latents / decode_latents use latents_mean/std as the Wan pipelines do."""
    video = np.random.default_rng(1).uniform(-1, 1, (1, 3, 5, 16, 16)).astype(np.float32)
    with torch.no_grad():
        mu = torch_vae[1].encode(torch.tensor(video)).latent_dist.mean
    mean, std = torch.tensor(MEAN).view(1, 4, 1, 1, 1), torch.tensor(STD).view(1, 4, 1, 1, 1)
    with jax.default_matmul_precision("highest"):
        latents = np.asarray(_jit(rd_vae, "encode_latents")(jnp.asarray(video)))
        np.testing.assert_allclose(latents, ((mu - mean) / std).numpy(), atol=ATOL)
        with torch.no_grad():
            ref = torch_vae[1].decode(torch.tensor(latents) * std + mean).sample.numpy()
        np.testing.assert_allclose(np.asarray(_jit(rd_vae, "decode_latents")(jnp.asarray(latents))), ref, atol=ATOL)


def test_decode_is_differentiable(tmp_path):
    """decode under jax.grad with remat, on a smaller VAE (one level, temporal) so the backward
    pass compiles quickly: diffusers' values over two chunks, finite nonzero gradients for the
    latents (ReFL's use: the reward's gradient flows through the frozen VAE into the generator)."""
    torch.manual_seed(1)
    small = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], temperal_downsample=[True],
                                       num_res_blocks=1, latents_mean=MEAN, latents_std=STD).eval()
    small.save_pretrained(tmp_path / "vae")
    z = np.random.default_rng(2).normal(size=(1, 4, 2, 4, 4)).astype(np.float32)
    with torch.no_grad():
        ref = small.decode(torch.tensor(z)).sample.numpy()
    graphdef, state = nnx.split(load_vae(tmp_path / "vae", remat="full"))

    def loss(state, z):
        video = nnx.merge(graphdef, state).decode(z)
        return jnp.mean(video ** 2), video

    with jax.default_matmul_precision("highest"):
        (_, video), g_z = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True))(state, jnp.asarray(z))
    assert video.shape == ref.shape == (1, 3, 3, 8, 8)   # one temporal level: 1 + 2 (T - 1) frames
    np.testing.assert_allclose(np.asarray(video), ref, atol=ATOL)
    assert bool(jnp.all(jnp.isfinite(g_z)))
    assert float(jnp.abs(g_z[:, :, 0]).max()) > 0 and float(jnp.abs(g_z[:, :, 1]).max()) > 0   # both chunks


def test_export_round_trip(torch_vae, rd_vae, tmp_path):
    export_vae(rd_vae, tmp_path / "vae")
    back = diffusers.AutoencoderKLWan.from_pretrained(tmp_path / "vae").eval()
    original = torch_vae[1].state_dict()
    assert set(back.state_dict()) == set(original)
    for key, value in back.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == \
        {k: v for k, v in torch_vae[1].config.items() if not k.startswith("_")}
    z = torch.randn(1, 4, 2, 2, 2)
    with torch.no_grad():
        assert torch.equal(back.decode(z).sample, torch_vae[1].decode(z).sample)
    # And it loads back into rdance with the same parameters.
    again = nnx.state(load_vae(tmp_path / "vae"), nnx.Param)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(nnx.state(rd_vae, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_wrong_folder_is_a_clear_error(tmp_path, rd_vae):
    flux_vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    flux_vae.save_pretrained(tmp_path / "flux_vae")
    with pytest.raises(CheckpointTypeError, match="AutoencoderKL checkpoint, not AutoencoderKLWan"):
        load_vae(tmp_path / "flux_vae")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        rd_vae.encode(jnp.zeros((1, 3, 4, 16, 16)))
    with pytest.raises(ValueError, match="multiples of 8"):
        rd_vae.encode(jnp.zeros((1, 3, 5, 12, 16)))


def test_loads_onto_a_mesh_and_runs_in_bfloat16(torch_vae, devices):
    """Parameters placed on an 8-device mesh as they load; bfloat16 compute keeps the chunk
    cache's dtype fixed through the scan and stays near diffusers' float32 decode."""
    from rdance.core import sharding
    model = load_vae(torch_vae[0], mesh=sharding.make_mesh((1, -1, 1)), remat="none", dtype="bfloat16")
    kernel = model.decoder.conv_in.kernel[...]
    assert len(kernel.sharding.device_set) == 8
    z = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 2, 2, 2)).astype(np.float32))
    with torch.no_grad():
        want = torch_vae[1].decode(torch.tensor(np.asarray(z))).sample.numpy()
    got = _jit(model, "decode")(z)
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    err = np.abs(np.asarray(got, np.float32) - want)
    assert err.mean() < 0.02 and err.max() < 0.25   # measured: max 0.07, mean 0.007


def test_a_fresh_vae_starts_from_torchs_default_init():
    """The world's VAE trains from scratch, and with normal(0.02) kernels and zero biases it drew no
    object where diffusers' own (torch-initialised) VAE learns them (bench/results/video_refl.md):
    every conv kernel and bias starts U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch's Conv layers."""
    from rdance.models.wan.vae import AutoencoderKLWan, WanVAEConfig
    cfg = WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2), num_res_blocks=1, temperal_downsample=(True,),
                       latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4, remat="none")
    params = nnx.to_pure_dict(nnx.state(AutoencoderKLWan(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    flat = {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    kernels = {k: v for k, v in flat.items() if k.endswith("kernel") and v.ndim >= 4}
    torch_convs = [m for m in diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                                         temperal_downsample=[True]).modules()
                   if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert len(kernels) == len(torch_convs) > 10
    for name, kernel in kernels.items():
        bound = 1.0 / np.sqrt(np.prod(kernel.shape[:-1]))
        bias = flat[name[:-len("kernel")] + "bias"]
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound, name
        assert abs(kernel.std() / (bound / np.sqrt(3.0)) - 1.0) < 0.25, name   # a uniform's std
        assert np.abs(bias).max() > 0.0, name
