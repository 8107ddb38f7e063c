"""The Wan transformer against diffusers' WanTransformer3DModel on tiny random configs (f32,
atol 1e-4): T2V, I2V and FLF2V forward passes, export round trip, sharding and remat, bfloat16,
a wrong folder's error."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from rdance.models.flux import config as cfglib  # noqa: E402
from rdance.models.wan import export_transformer, load_transformer  # noqa: E402

ATOL = 1e-4
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=24, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32)
# diffusers' I2V attention takes the last 512 context tokens as text: I2V tests use 512 of them.
TEXT_LEN_I2V = 512


def max_diff(ours, ref):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    diff = float(np.abs(np.asarray(ours) - ref).max())
    print(f"max abs diff: {diff:.2e}")  # shown with pytest -rP, for the parity report
    return diff


def _wan(tmp_path, name, **extra):
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**{**TINY, **extra}).eval()
    with torch.no_grad():  # make the zero-initialised and unit tables random too
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, model


def _run_both(folder, model, inputs):
    with torch.no_grad():
        ref = model(**{k: torch.tensor(v) for k, v in inputs.items()}).sample
    rd = load_transformer(folder)
    with jax.default_matmul_precision("highest"):
        ours = rd(**inputs)
    return rd, ours, ref


def test_transformer_t2v(tmp_path):
    folder, model = _wan(tmp_path, "t2v")
    rng = np.random.default_rng(0)
    inputs = dict(hidden_states=rng.standard_normal((2, 4, 3, 4, 6)).astype(np.float32),
                  timestep=np.array([999.0, 250.0], np.float32),
                  encoder_hidden_states=rng.standard_normal((2, 7, 24)).astype(np.float32))
    _, ours, ref = _run_both(folder, model, inputs)
    assert ours.shape == tuple(ref.shape) == (2, 4, 3, 4, 6)
    assert max_diff(ours, ref) < ATOL


def test_transformer_bfloat16_compute_is_close(tmp_path):
    """dtype='bfloat16' (parameters kept in float32) runs and stays near the float32 output."""
    folder, _ = _wan(tmp_path, "t2v")
    rng = np.random.default_rng(7)
    args = (rng.standard_normal((1, 4, 2, 4, 4)).astype(np.float32), 400.0,
            rng.standard_normal((1, 6, 24)).astype(np.float32))
    want = np.asarray(load_transformer(folder)(*args))
    got = load_transformer(folder, dtype="bfloat16")(*args)
    assert got.dtype == np.dtype("bfloat16")
    err = np.abs(np.asarray(got, np.float32) - want).max() / np.abs(want).max()
    print(f"bfloat16 max error / max |output|: {err:.2e}")
    assert err < 5e-2
    with pytest.raises(ValueError, match="per-token timesteps"):
        load_transformer(folder)(args[0], np.zeros((1, 8), np.float32), args[2])


def _add_tensors(folder, tensors):
    from safetensors.torch import load_file, save_file
    path = folder / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(path), **tensors}, path)


def test_transformer_i2v(tmp_path):
    # I2V: 8 input channels (noise + mask + image latents), CLIP image tokens through the image
    # embedder and the extra K/V of every cross-attention.
    folder, model = _wan(tmp_path, "i2v", image_dim=20, added_kv_proj_dim=32, in_channels=8)
    rng = np.random.default_rng(1)
    inputs = dict(hidden_states=rng.standard_normal((1, 8, 2, 4, 4)).astype(np.float32),
                  timestep=np.array([500.0], np.float32),
                  encoder_hidden_states=rng.standard_normal((1, TEXT_LEN_I2V, 24)).astype(np.float32),
                  encoder_hidden_states_image=rng.standard_normal((1, 5, 20)).astype(np.float32))
    # Released I2V checkpoints also store an unused attn2.norm_added_q per block (diffusers skips it).
    _add_tensors(folder, {f"blocks.{i}.attn2.norm_added_q.weight": torch.ones(32) for i in range(2)})
    rd, ours, ref = _run_both(folder, model, inputs)
    assert ours.shape == (1, 4, 2, 4, 4)
    assert max_diff(ours, ref) < ATOL
    with pytest.raises(ValueError, match="encoder_hidden_states_image"):
        rd(**{k: v for k, v in inputs.items() if k != "encoder_hidden_states_image"})


def _diffusers_load(folder):
    """``WanTransformer3DModel.from_pretrained(folder)`` as far as this environment allows: without
    accelerate diffusers refuses Wan's keep-in-fp32 modules, so config.json through from_config and
    the weights through a strict load_state_dict (every key, both ways)."""
    from safetensors.torch import load_file
    cls = diffusers.WanTransformer3DModel
    model = cls.from_config(cls.load_config(folder))
    model.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return model.eval()


def test_transformer_export_round_trip(tmp_path):
    folder, _ = _wan(tmp_path, "i2v", image_dim=20, added_kv_proj_dim=32)
    rd = load_transformer(folder)
    out = export_transformer(rd, tmp_path / "exported")
    back = _diffusers_load(out)
    rng = np.random.default_rng(2)
    inputs = dict(hidden_states=rng.standard_normal((1, 4, 2, 4, 4)).astype(np.float32),
                  timestep=np.array([10.0], np.float32),
                  encoder_hidden_states=rng.standard_normal((1, TEXT_LEN_I2V, 24)).astype(np.float32),
                  encoder_hidden_states_image=rng.standard_normal((1, 3, 20)).astype(np.float32))
    with torch.no_grad():
        ref = back(**{k: torch.tensor(v) for k, v in inputs.items()}).sample
    with jax.default_matmul_precision("highest"):
        ours = rd(**inputs)
    assert max_diff(ours, ref) < ATOL
    assert cfglib.read_json(out)["_class_name"] == "WanTransformer3DModel"


def test_transformer_flf2v_image_positions(tmp_path):
    """First-last-frame checkpoints add learned positions over both images' CLIP tokens (and,
    for coverage, no LayerNorm before cross-attention)."""
    folder, model = _wan(tmp_path, "flf2v", image_dim=20, added_kv_proj_dim=32, pos_embed_seq_len=6,
                         cross_attn_norm=False)
    rng = np.random.default_rng(5)
    inputs = dict(hidden_states=rng.standard_normal((1, 4, 1, 4, 4)).astype(np.float32),
                  timestep=np.array([700.0], np.float32),
                  encoder_hidden_states=rng.standard_normal((1, TEXT_LEN_I2V, 24)).astype(np.float32),
                  encoder_hidden_states_image=rng.standard_normal((2, 3, 20)).astype(np.float32))
    _, ours, ref = _run_both(folder, model, inputs)
    assert max_diff(ours, ref) < ATOL


def test_unknown_checkpoint_key_still_fails(tmp_path):
    from rdance.models.convert import ConversionError
    folder, _ = _wan(tmp_path, "t2v")
    _add_tensors(folder, {"blocks.0.attn1.norm_added_q.weight": torch.ones(32)})
    with pytest.raises(ConversionError, match="map to no parameter"):
        load_transformer(folder)


def test_sharded_and_rematerialised_match_plain(tmp_path, devices):
    """On an 8-device mesh (fsdp x tensor) with remat='full', outputs and input gradients equal
    the single-device run without remat."""
    from flax import nnx

    from rdance.core import sharding
    folder, _ = _wan(tmp_path, "t2v")
    mesh = sharding.make_mesh((2, 2, 2))
    sharded = load_transformer(folder, mesh=mesh, remat="full")
    assert sharded.blocks.attn1.to_q.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    plain = load_transformer(folder)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 4, 2, 4, 4)).astype(np.float32)
    t = np.array([1.0, 300.0, 600.0, 900.0], np.float32)
    text = rng.standard_normal((4, 5, 24)).astype(np.float32)

    def grad_fn(model):
        graphdef, state = nnx.split(model)
        loss = lambda state, x: (nnx.merge(graphdef, state)(x, t, text) ** 2).mean()  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=1)), state
    with jax.default_matmul_precision("highest"):
        run, state = grad_fn(sharded)
        got = run(state, jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)))
        run, state = grad_fn(plain)
        want = run(state, x)
    assert abs(float(got[0]) - float(want[0])) < 1e-5
    assert np.abs(want[1]).max() > 0
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), atol=1e-5)


def test_wrong_folder_is_a_clear_error(tmp_path):
    flux = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    flux.save_pretrained(tmp_path / "flux")
    with pytest.raises(cfglib.CheckpointTypeError, match="FluxTransformer2DModel.*WanTransformer3DModel"):
        load_transformer(tmp_path / "flux")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_transformer(tmp_path / "nowhere")
