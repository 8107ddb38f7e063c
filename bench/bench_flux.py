"""One FLUX denoising step and one VAE decode: rdance (jit) against diffusers (PyTorch), on CPU.

    python bench/bench_flux.py --threads=2 --size=256 --reps=3

Both models are random, built by diffusers, saved with save_pretrained and loaded by rdance, so
the two sides compute the same function (checked once per row; that call is each side's warm-up).
Prints one table.
"""
import os
import tempfile

from absl import app, flags

from timing import median_time, print_comparison, use_cpu_threads

flags.DEFINE_integer("threads", os.cpu_count(), "CPU threads for both PyTorch and XLA.")
flags.DEFINE_integer("size", 256, "Image side in pixels.")
flags.DEFINE_integer("text_tokens", 128, "T5 tokens.")
flags.DEFINE_integer("reps", 3, "Timed repetitions (after one warm-up); the median is reported.")
FLAGS = flags.FLAGS

# ~100M parameters: FLUX's block structure at reduced width and depth.
TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=3, num_single_layers=4, attention_head_dim=128,
                   num_attention_heads=6, joint_attention_dim=4096, pooled_projection_dim=768,
                   guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# The FLUX.1 VAE configuration itself (84M parameters).
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
           layers_per_block=2, latent_channels=16, norm_num_groups=32, scaling_factor=0.3611,
           shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)


def main(argv):
    del argv
    use_cpu_threads(FLAGS.threads)   # before jax is imported
    import jax
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from flax import nnx

    from rdance.diffusion import flow_match
    from rdance.models.flux import load_transformer, load_vae
    torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    tmp = tempfile.mkdtemp()

    # Denoising step: transformer forward + Euler update, batch 1.
    ref = FluxTransformer2DModel(**TRANSFORMER).eval()
    ref.save_pretrained(f"{tmp}/transformer")
    model = load_transformer(f"{tmp}/transformer")
    params = sum(p.numel() for p in ref.parameters())
    h = w = FLAGS.size // 8
    tokens = (h // 2) * (w // 2)
    args = dict(hidden_states=rng.standard_normal((1, tokens, 64)).astype(np.float32),
                encoder_hidden_states=rng.standard_normal((1, FLAGS.text_tokens, 4096)).astype(np.float32),
                pooled_projections=rng.standard_normal((1, 768)).astype(np.float32),
                timestep=np.array([0.7], np.float32), guidance=np.array([3.5], np.float32),
                img_ids=flow_match.image_ids(h, w), txt_ids=np.zeros((FLAGS.text_tokens, 3), np.float32))
    torch_args = {k: torch.tensor(v) for k, v in args.items()}
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, args):
        v = nnx.merge(graphdef, state)(**args)
        return args["hidden_states"] + (0.6 - 0.7) * v

    def torch_step():
        with torch.no_grad():
            return torch_args["hidden_states"] + (0.6 - 0.7) * ref(**torch_args).sample

    diff = np.abs(np.asarray(step(state, args)) - torch_step().numpy()).max()
    rows.append(("denoise step", f"{params / 1e6:.0f}M", f"{FLAGS.size}px, {tokens}+{FLAGS.text_tokens} tok",
                 median_time(torch_step, FLAGS.reps, warm_up=False),
                 median_time(lambda: step(state, args), FLAGS.reps, warm_up=False), diff))
    del ref, model, state

    # VAE decode of one latent.
    ref = AutoencoderKL(**VAE).eval()
    ref.save_pretrained(f"{tmp}/vae")
    model = load_vae(f"{tmp}/vae", remat="none")
    params = sum(p.numel() for p in ref.parameters())
    z = rng.standard_normal((1, 16, h, w)).astype(np.float32)
    graphdef, state = nnx.split(model)
    decode = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))

    def torch_decode():
        with torch.no_grad():
            return ref.decode(torch.tensor(z)).sample

    diff = np.abs(np.asarray(decode(state, z)) - torch_decode().numpy()).max()
    rows.append(("VAE decode", f"{params / 1e6:.0f}M", f"{FLAGS.size}px",
                 median_time(torch_decode, FLAGS.reps, warm_up=False),
                 median_time(lambda: decode(state, z), FLAGS.reps, warm_up=False), diff))

    print_comparison(f"FLUX, CPU, {FLAGS.threads} threads, float32, batch 1, median of {FLAGS.reps} (after warm-up)",
                     rows)

if __name__ == "__main__":
    app.run(main)
