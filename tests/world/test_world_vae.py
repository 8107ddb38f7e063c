"""The latent world generator's VAE: shapes of encode/decode, its training step, the generator
folder's vae/ (round trip, and diffusers computes what rdance computes), and ReFL's gradient
through the frozen decoder."""
import diffusers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from rdance.diffusion import flow_match
from rdance.world.autoencoder import fit_vae, make_train_step, reconstruction_judge, train_vae, vae_loss
from rdance.world.captions import RenderedCaptions
from rdance.world.generator import WorldGenerator, WorldGeneratorConfig
from tests.conftest import TINY_GENERATOR


def make(tmp_path, **sizes) -> WorldGenerator:
    WorldGenerator.write_tokenizer(str(tmp_path / "tokenizer"))
    return WorldGenerator.create(dict(TINY_GENERATOR, **sizes), str(tmp_path / "tokenizer"), seed=0)


def renders(n, seed=0):
    source = RenderedCaptions(n, seed=seed)
    return np.stack([source[i][1] for i in range(n)])


def test_latents_are_the_vaes_packed_2x2(tmp_path):
    gen = make(tmp_path, vae_channels=(8, 8), vae_latent_channels=4, vae_groups=4)
    assert gen.cfg.vae_factor == 2 and gen.cfg.grid == 8
    assert gen.latent_shape == (64, 16) and gen.cfg.flux().in_channels == 16
    images = renders(3)
    latents = gen.encode(gen.frozen, images)
    assert latents.shape == (3, *gen.latent_shape)
    vae = nnx.merge(gen.vae_def, gen.frozen["vae"])
    x = jnp.transpose(jnp.asarray(images, jnp.float32) / 127.5 - 1.0, (0, 3, 1, 2))
    np.testing.assert_allclose(latents, flow_match.pack(vae.encode_latents(x)), rtol=1e-5, atol=1e-6)
    out = gen.decode(gen.frozen, latents)
    assert out.shape == (3, 32, 32, 3) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Deeper VAEs downsample more: factor 4 leaves 4x4 tokens of packed latents.
    assert make(tmp_path, vae_channels=(8, 8, 8), vae_groups=4).latent_shape == (16, 4 * 4)


def test_unpacked_latents_make_each_latent_pixel_a_token(tmp_path):
    gen = make(tmp_path, vae_channels=(8, 8, 8), vae_latent_channels=4, vae_groups=4, vae_pack=1)
    assert gen.cfg.grid == 8 and gen.latent_shape == (64, 4) and gen.cfg.flux().in_channels == 4
    assert gen.img_ids.shape == (64, 3) and gen.img_ids[9].tolist() == [0, 1, 1]
    images = renders(2)
    latents = gen.encode(gen.frozen, images)
    vae = nnx.merge(gen.vae_def, gen.frozen["vae"])
    x = jnp.transpose(jnp.asarray(images, jnp.float32) / 127.5 - 1.0, (0, 3, 1, 2))
    z = vae.encode_latents(x)                                           # [2, 4, 8, 8]
    # Token r * 8 + c holds latent pixel (r, c), its channels in order.
    np.testing.assert_allclose(latents[:, 8 * 3 + 5], z[:, :, 3, 5], rtol=1e-5, atol=1e-6)
    out = gen.decode(gen.frozen, latents)
    ref = jnp.clip((jnp.transpose(vae.decode_latents(z), (0, 2, 3, 1)) + 1.0) * 0.5, 0.0, 1.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_vae_sizes_are_checked():
    with pytest.raises(ValueError, match="multiples of vae_groups"):
        WorldGeneratorConfig(vae_channels=(12, 16), vae_groups=8)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        WorldGeneratorConfig(image_size=36, vae_channels=(8, 8, 8), vae_groups=4)
    with pytest.raises(ValueError, match="vae_scale"):
        WorldGeneratorConfig(vae_channels=(8, 8), vae_groups=4, vae_scale=0.0)
    with pytest.raises(ValueError, match="vae_pack 3"):
        WorldGeneratorConfig(vae_channels=(8, 8), vae_groups=4, vae_pack=3)
    with pytest.raises(ValueError, match="not a multiple of 4 .* vae_pack 1"):
        WorldGeneratorConfig(image_size=34, vae_channels=(8, 8, 8), vae_groups=4, vae_pack=1)


def test_vae_training_step_lowers_the_loss(tmp_path):
    gen = make(tmp_path)
    graphdef, state = nnx.split(gen.make_vae(), nnx.Param)
    params = nnx.to_pure_dict(state)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx, kl_weight=1e-4, edge_weight=1.0)
    images = renders(8)
    losses = []
    for i in range(12):
        params, opt_state, loss, metrics = step(params, opt_state, images, jax.random.key(i))
        losses.append(float(loss))
        assert set(metrics) == {"l1", "mse", "edge", "kl", "colour"}
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


class ShiftingVAE:
    """encode: the image itself; decode: ``fn`` of it (a stand-in reconstruction)."""
    def __init__(self, fn):
        self.fn = fn

    def encode(self, x):
        return x, jnp.zeros_like(x)

    def decode(self, z):
        return self.fn(z)


def test_colour_term_sees_hue_not_brightness():
    from rdance.world.prompts import COLOURS
    green, blue = (np.asarray(COLOURS[c], np.float32) / 127.5 - 1.0 for c in ("green", "blue"))
    x = jnp.asarray(np.stack([green, blue])[None].repeat(2, 0).transpose(2, 0, 1)[None])   # NCHW: 1x3x2x2
    key = jax.random.key(0)

    def loss(fn, weight):
        return vae_loss(ShiftingVAE(fn), x, key, 0.0, 0.0, sample=False, colour_weight=weight)
    # A brightness offset costs L1 but no colour error.
    _, brighter = loss(lambda z: z + 0.1, 2.0)
    assert float(brighter["l1"]) == pytest.approx(0.1) and float(brighter["colour"]) == pytest.approx(0.0, abs=1e-6)
    # Drawing green and blue as their mean (the teal of the video VAE) is a colour error: mostly along
    # G - B, where the two differ most, and some along R - G.
    teal = lambda z: jnp.broadcast_to(z.mean(axis=3, keepdims=True), z.shape)
    plain, m = loss(teal, 0.0)
    weighted, _ = loss(teal, 2.0)
    gb = abs((green[1] - green[2]) - (blue[1] - blue[2])) / 2    # each pixel's G - B error
    rg = abs((green[0] - green[1]) - (blue[0] - blue[1])) / 2
    assert float(m["colour"]) == pytest.approx((gb + rg) / 2, rel=1e-5)
    assert float(weighted) == pytest.approx(float(plain) + 2.0 * float(m["colour"]), rel=1e-5)


def test_negative_colour_weight_is_refused(tmp_path):
    c = ml_collections.ConfigDict(dict(steps=1, batch_size=1, learning_rate=1e-3, warmup_steps=1, kl_weight=1e-4,
                                       edge_weight=1.0, colour_weight=-1.0, seed=0, log_every=1))
    with pytest.raises(ValueError, match=r"vae\.colour_weight=-1.0 must be >= 0"):
        fit_vae(make(tmp_path).make_vae(), c, iter(()), lambda x: x)


def test_trained_vae_is_written_reloaded_and_judged(tmp_path):
    gen = make(tmp_path)
    c = ml_collections.ConfigDict(dict(steps=3, batch_size=4, learning_rate=1e-3, warmup_steps=1, kl_weight=1e-4,
                                       edge_weight=1.0, seed=0, log_every=1, eval_prompts=4))
    trained, stats = train_vae(gen, c, str(tmp_path))
    assert trained.cfg.vae_scale == pytest.approx(stats["scale"]) and trained.cfg.vae_shift == pytest.approx(stats["shift"])
    assert 0.0 <= stats["recon/judge"] <= 1.0 and "recon/check/shape_given_colour" in stats
    # The latents it sees are standardised by the measured shift and scale.
    latents = trained.encode(trained.frozen, renders(64, seed=5))
    assert abs(float(latents.mean())) < 0.3 and 0.6 < float(latents.std()) < 1.6
    # A rerun reuses WORKDIR/vae instead of training again.
    again, stats_again = train_vae(gen, c, str(tmp_path))
    assert stats_again == stats and again.cfg == trained.cfg
    jax.tree.map(np.testing.assert_array_equal, again.frozen, jax.device_get(trained.frozen))
    assert reconstruction_judge(again, 4) == {k: v for k, v in stats.items() if k.startswith("recon/")}


def test_generator_folder_vae_round_trips_and_decodes_like_diffusers(tmp_path):
    gen = make(tmp_path).with_vae(
        jax.tree.map(lambda a: a + 0.01 * np.random.default_rng(0).normal(size=a.shape).astype(a.dtype),
                     make(tmp_path).frozen["vae"]), scale=1.7, shift=-0.2)
    params = nnx.to_pure_dict(nnx.state(gen.make_model(), nnx.Param))
    folder = gen.export(params, str(tmp_path / "export"))
    loaded = WorldGenerator.from_pretrained(folder)
    assert loaded.cfg == gen.cfg
    jax.tree.map(np.testing.assert_array_equal, loaded.frozen, gen.frozen)
    latents = np.random.default_rng(1).normal(size=(2, *gen.latent_shape)).astype(np.float32)
    ours = np.asarray(loaded.decode(loaded.frozen, latents))
    np.testing.assert_array_equal(ours, np.asarray(gen.decode(gen.frozen, latents)))

    vae = diffusers.AutoencoderKL.from_pretrained(f"{folder}/vae").eval()
    assert vae.config.scaling_factor == pytest.approx(1.7) and vae.config.shift_factor == pytest.approx(-0.2)
    side = gen.cfg.image_size // gen.cfg.vae_factor
    z = flow_match.unpack(jnp.asarray(latents), side, side)
    with torch.no_grad():   # as diffusers' FluxPipeline decodes: latents / scaling_factor + shift_factor
        ref = vae.decode(torch.tensor(np.asarray(z)) / vae.config.scaling_factor + vae.config.shift_factor).sample
    ref = np.clip((ref.numpy().transpose(0, 2, 3, 1) + 1.0) * 0.5, 0.0, 1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    images = renders(2)
    with torch.no_grad():
        mean = vae.encode(torch.tensor(images.transpose(0, 3, 1, 2) / 127.5 - 1.0, dtype=torch.float32)).latent_dist.mean
    theirs = (mean.numpy() - vae.config.shift_factor) * vae.config.scaling_factor
    np.testing.assert_allclose(np.asarray(loaded.encode(loaded.frozen, images)),
                               np.asarray(flow_match.pack(jnp.asarray(theirs))), atol=1e-4)


def test_reward_gradient_flows_through_the_frozen_vae_decoder(tmp_path):
    """ReFL's reward of decoded images differentiates back through the VAE decoder into the
    latents (and so into the transformer), while the decoder itself stays frozen."""
    gen = make(tmp_path)
    latents = jnp.asarray(np.random.default_rng(2).normal(size=(2, *gen.latent_shape)), jnp.float32)

    def reward(latents, frozen):   # prefers red
        return gen.decode(frozen, latents)[..., 0].mean()

    grad_latents, grad_vae = jax.grad(reward, argnums=(0, 1))(latents, gen.frozen)
    assert np.isfinite(grad_latents).all() and float(jnp.abs(grad_latents).max()) > 0
    # The decoder's parameters are in the path (nonzero gradients exist), the encoder's are not.
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grad_vae["vae"]["decoder"]))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grad_vae["vae"]["encoder"]))
    # A step along the gradient raises the reward.
    assert float(reward(latents + 0.5 * grad_latents / jnp.abs(grad_latents).max(), gen.frozen)) > float(
        reward(latents, gen.frozen))
