"""One Wan 2.1 denoising step and one VAE decode of a clip: rdance (jit) against diffusers
(PyTorch), on CPU.

    python bench/bench_wan.py --threads=2 --size=256 --frames=17 --reps=3

The transformer is Wan 2.1 1.3B's width (12 heads x 128 = 1536, FFN 8960, UMT5's 4096-wide text
input) with 2 of its 30 blocks (119M parameters); the VAE is the Wan 2.1 VAE itself
(AutoencoderKLWan's defaults: base_dim 96, z_dim 16, 127M parameters). Both are random, built by
diffusers, saved with save_pretrained and loaded by rdance.models.wan as WanSampler loads them,
so the two sides compute the same function (checked once per row: max abs difference). A 17-frame
256x256 clip is 5x32x32 latents, 1280 transformer tokens. The step is one transformer pass and
an Euler update (classifier-free guidance runs two passes a step). The call that compares the
two sides' outputs is each side's warm-up (jax compiles there). Prints one table.
"""
import os
import tempfile

from absl import app, flags

from timing import median_time, print_comparison, use_cpu_threads

flags.DEFINE_integer("threads", os.cpu_count(), "CPU threads for both PyTorch and XLA.")
flags.DEFINE_integer("size", 256, "Clip height and width in pixels (multiple of 16).")
flags.DEFINE_integer("frames", 17, "Clip frames (4k+1: the VAE's time stride is 4).")
flags.DEFINE_list("text_tokens", ["128", "512"], "UMT5 tokens of the denoising rows (Wan pads every prompt to 512).")
flags.DEFINE_integer("reps", 3, "Timed repetitions (after the warm-up call that compares outputs); the median "
                     "is reported.")
flags.DEFINE_bool("tiny", False, "Tiny random models instead (a quick check that the bench runs).")
FLAGS = flags.FLAGS

# Wan 2.1 T2V 1.3B's block at its full width, 2 blocks instead of 30.
TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=2)
VAE = dict()   # AutoencoderKLWan's defaults are the Wan 2.1 VAE
TINY_TRANSFORMER = dict(TRANSFORMER, num_attention_heads=2, attention_head_dim=12, text_dim=32, freq_dim=32,
                        ffn_dim=64, in_channels=4, out_channels=4)
TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=[0.0] * 4,
                latents_std=[1.0] * 4)


def check_flags():
    if FLAGS.size <= 0 or FLAGS.size % 16:
        raise app.UsageError(f"--size {FLAGS.size} must be a positive multiple of 16 (VAE factor 8 x 2x2 patches)")
    if FLAGS.frames < 1 or (FLAGS.frames - 1) % 4:
        raise app.UsageError(f"--frames {FLAGS.frames} must be 4k+1 (the Wan VAE's time stride is 4)")


def main(argv):
    del argv
    check_flags()
    use_cpu_threads(FLAGS.threads)   # before jax is imported
    import jax
    import numpy as np
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from flax import nnx

    from rdance.models.wan import load_transformer, load_vae
    torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    tmp = tempfile.mkdtemp()
    transformer_cfg, vae_cfg = (TINY_TRANSFORMER, TINY_VAE) if FLAGS.tiny else (TRANSFORMER, VAE)

    # Denoising step: transformer forward + Euler update, batch 1, at each text length.
    ref = WanTransformer3DModel(**transformer_cfg).eval()
    ref.save_pretrained(f"{tmp}/transformer")
    model = load_transformer(f"{tmp}/transformer")
    params = sum(p.numel() for p in ref.parameters())
    latent = (1, ref.config.in_channels, (FLAGS.frames - 1) // 4 + 1, FLAGS.size // 8, FLAGS.size // 8)
    tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, x, t, text):
        v = nnx.merge(graphdef, state)(x, t, text)
        return x + (0.6 - 0.7) * v

    for text_tokens in map(int, FLAGS.text_tokens):
        x = rng.standard_normal(latent).astype(np.float32)
        t = np.array([700.0], np.float32)
        text = rng.standard_normal((1, text_tokens, ref.config.text_dim)).astype(np.float32)
        torch_args = [torch.tensor(a) for a in (x, t, text)]

        def torch_step():
            with torch.no_grad():
                return torch_args[0] + (0.6 - 0.7) * ref(*torch_args, return_dict=False)[0]

        diff = np.abs(np.asarray(step(state, x, t, text)) - torch_step().numpy()).max()
        rows.append((f"denoise step, {text_tokens} text", f"{params / 1e6:.3g}M",
                     f"{'x'.join(map(str, latent[2:]))} lat, {tokens}+{text_tokens} tok",
                     median_time(torch_step, FLAGS.reps, warm_up=False),
                     median_time(lambda: step(state, x, t, text), FLAGS.reps, warm_up=False), diff))
    del ref, model, state

    # VAE decode of the clip's latents (unnormalised, as AutoencoderKLWan.decode takes them).
    ref = AutoencoderKLWan(**vae_cfg).eval()
    ref.save_pretrained(f"{tmp}/vae")
    model = load_vae(f"{tmp}/vae", remat="none")
    params = sum(p.numel() for p in ref.parameters())
    z = rng.standard_normal((1, ref.config.z_dim) + latent[2:]).astype(np.float32)
    graphdef, state = nnx.split(model)
    decode = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))

    def torch_decode():
        with torch.no_grad():
            return ref.decode(torch.tensor(z)).sample

    diff = np.abs(np.asarray(decode(state, z)) - torch_decode().numpy()).max()
    rows.append(("VAE decode", f"{params / 1e6:.3g}M", f"-> {FLAGS.frames}x{FLAGS.size}x{FLAGS.size} px",
                 median_time(torch_decode, FLAGS.reps, warm_up=False),
                 median_time(lambda: decode(state, z), FLAGS.reps, warm_up=False), diff))

    print_comparison(f"Wan 2.1{' (tiny)' if FLAGS.tiny else ''}, CPU, {FLAGS.threads} threads, float32, batch 1, "
                     f"median of {FLAGS.reps} (after warm-up)", rows)


if __name__ == "__main__":
    app.run(main)
