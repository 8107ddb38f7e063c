"""Does a VAE learn the moving world's objects? Trains the world video generator's VAE (Wan's
causal 3D VAE at experiments/video_smoke.py's sizes) or, for comparison, the still world's
FLUX-architecture VAE on the same clips' frames, and every ``--every`` steps prints the error of
its posterior-mean reconstructions of held-out clips on object pixels and on background pixels.

    python bench/bench_clip_vae.py --arch=wan --steps=200
    python bench/bench_clip_vae.py --arch=wan --steps=100 --learning_rate=1e-3 --clamp
    python bench/bench_clip_vae.py --arch=flux --steps=120

Errors are mean absolute errors summed over RGB in [-1, 1] units; a VAE that draws background
where the objects are scores the objects' distance from the background (~2.5 here); the last
column splits the object error by the object's colour (a VAE that keeps shapes but merges
colours shows there). ``sat`` is
the share of the decoder's unclamped output below -1: with ``--clamp`` (the loss taken through
Wan's clamp, as before #23's fix) those pixels pass no gradient.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("wan", "flux"), default="wan")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4, help="Clips a step (flux: their frames as images).")
    parser.add_argument("--learning_rate", type=float, default=4e-3)
    parser.add_argument("--clamp", action="store_true", help="Take the Wan VAE's loss through its clamp.")
    parser.add_argument("--posterior_sample", action="store_true", help="Reconstruct a posterior sample.")
    parser.add_argument("--colour_weight", type=float, default=0.0,
                        help="Weight of the L1 on the colour-opponent channels R-G, G-B (autoencoder.chroma).")
    parser.add_argument("--base_dim", type=int, default=8, help="The Wan VAE's base width.")
    parser.add_argument("--init_from", default="",
                        help="Wan: start from this diffusers AutoencoderKLWan folder (e.g. one torch initialised and "
                             "saved) instead of rdance's initialisation.")
    parser.add_argument("--first_frame", action="store_true",
                        help="Wan: train and probe on 1-frame clips (their first frame): the causal VAE's "
                             "first chunk alone, as an image VAE.")
    args = parser.parse_args()

    import jax
    import optax
    from flax import nnx

    from experiments import video_smoke
    from rdance.models.flux.vae import AutoencoderKL
    from rdance.models.wan.vae import clips_to_video
    from rdance.world.autoencoder import batches, make_train_step, to_unit_range
    from rdance.world.generator import WorldGeneratorConfig
    from rdance.world.motion import RenderedClips
    from rdance.world.prompts import COLOURS
    from rdance.world.video_generator import WorldVideoConfig

    sizes = dict(video_smoke.get_config().model)
    frames, size = sizes["frames"], sizes["image_size"]
    if args.arch == "wan":
        sizes.update(vae_base_dim=args.base_dim, dtype="float32")
        cfg = WorldVideoConfig(**{k: v for k, v in sizes.items() if k in WorldVideoConfig.__dataclass_fields__},
                               vocab_size=64)
        from rdance.models.wan.vae import AutoencoderKLWan
        if args.init_from:
            from rdance.models.wan import load_vae
            vae = load_vae(args.init_from, param_dtype="float32", dtype="float32", remat="none")
        else:
            vae = AutoencoderKLWan(cfg.vae(), rngs=nnx.Rngs(0))
        to_unit = clips_to_video
        shape = (lambda clips: clips[:, :1]) if args.first_frame else (lambda clips: clips)
        decode_kwargs = None if args.clamp else {"clamp": False}
    else:
        cfg = WorldGeneratorConfig(image_size=size, vae_channels=(16, 32), vae_latent_channels=4, vae_layers=1,
                                   vae_groups=8, vocab_size=64, param_dtype="float32", dtype="float32")
        vae, to_unit = AutoencoderKL(cfg.vae(), rngs=nnx.Rngs(0)), to_unit_range
        shape = lambda clips: clips.reshape((-1,) + clips.shape[2:])
        decode_kwargs = None
    graphdef, state = nnx.split(vae, nnx.Param)
    params = nnx.to_pure_dict(state)
    warmup = min(10, args.steps - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.learning_rate, warmup, args.steps, end_value=0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx, 1e-4, 1.0, to_unit, args.posterior_sample, decode_kwargs,
                           args.colour_weight)
    data = batches(RenderedClips(10_000_000, seed=0, image_size=size, frames=frames), args.batch_size)
    probe = shape(next(batches(RenderedClips(64, seed=1, image_size=size, frames=frames), 8)))

    @jax.jit
    def unclamped_reconstruction(p, x):
        model = nnx.merge(graphdef, p)
        mean, _ = model.encode(to_unit(x))
        return model.decode(mean, **(decode_kwargs or {})) if args.arch == "wan" else model.decode(mean)

    target = np.asarray(to_unit(probe))
    objects = np.abs(target - target[:, :, ..., :1, :1]).sum(1) > 0.2   # unlike the top-left (background) pixel
    # Each object pixel's colour: the world's colour nearest to its rendered value.
    palette = np.asarray(list(COLOURS.values()), np.float32) / 127.5 - 1.0
    nearest = np.abs(np.moveaxis(target, 1, -1)[..., None, :] - palette).sum(-1).argmin(-1)
    print(f"{args.arch} VAE, batch {args.batch_size} clips of {frames}x{size}x{size}, lr {args.learning_rate}"
          f"{', loss through the clamp' if args.clamp else ''}; object pixels {objects.mean():.3f} of the probe")
    print("| step | loss | l1 | sat < -1 | obj err | bg err | obj err by colour | s/step (with compile) |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.time()
    for i in range(1, args.steps + 1):
        params, opt_state, loss, metrics = step(params, opt_state, shape(next(data)), jax.random.key(i))
        if i % args.every == 0 or i == 1:
            out = np.asarray(unclamped_reconstruction(params, probe))
            err = np.abs(out - target).sum(1)
            by_colour = " ".join(f"{name} {err[objects & (nearest == c)].mean():.2f}"
                                 for c, name in enumerate(COLOURS) if np.any(objects & (nearest == c)))
            print(f"| {i} | {float(loss):.3f} | {float(metrics['l1']):.3f} | {np.mean(out < -1):.3f} | "
                  f"{err[objects].mean():.3f} | {err[~objects].mean():.3f} | {by_colour} | "
                  f"{(time.time() - start) / i:.2f} |", flush=True)


if __name__ == "__main__":
    main()
