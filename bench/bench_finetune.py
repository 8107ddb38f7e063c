"""One ReFL step of the smoke fine-tuning config on CPU, and its parts: the gradient-free rollout,
the generator's forward and backward through the graded step and the decode, and the reward
model's forward and backward (the gradient with respect to the images).

    python bench/bench_finetune.py --reps=5
    python bench/bench_finetune.py --generator=/tmp/gen_smoke/export --rm=/tmp/rm_smoke/export
    python bench/bench_finetune.py --grad_steps=10      # refl.grad_steps: a 10-step graded chain

Without folders the models are random, with the smoke configs' sizes (experiments/gen_smoke.py,
experiments/rm_smoke.py). Batch and sampler settings come from experiments/finetune_smoke.py;
the rollout is timed at the window's middle step. Each part is jitted on its own; the total is
the compiled training step (optimizer, EMA and monitors included). GFLOP are XLA's cost
analysis of each compiled part (loops counted once per iteration). Prints one table.

Measured (2 idle CPU cores, the 4000-step gen_smoke generator and rm_smoke's pairwise RM, median
of 3): with one graded step (k = 17) the whole step takes 0.93 s, of which the rollout 0.42 s,
the generator's graded step 0.18 s and the RM's forward and backward 0.21 s. With
``--grad_steps=10`` (k = 10) it takes 1.7-2.0 s (two runs), the 10 graded steps 1.46-1.48 s of it.
"""
import os
import sys
import tempfile

from absl import app, flags

from timing import median_time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/

flags.DEFINE_string("generator", "", "A world generator folder (default: random, gen_smoke sizes).")
flags.DEFINE_string("rm", "", "A reward model folder (default: random, rm_smoke sizes).")
flags.DEFINE_integer("reps", 5, "Timed repetitions after one warm-up; the median is reported.")
flags.DEFINE_integer("grad_steps", 1, "refl.grad_steps: Euler steps the gradient runs back through "
                     "(the window grows to hold them).")
flags.DEFINE_bool("tiny", False, "Random models of the demo's tiny CI sizes (a quick check that the bench runs).")
FLAGS = flags.FLAGS


def random_folders(tmp, tiny: bool = False):
    """Random generator and reward model with the smoke configs' sizes (or the demo's tiny CI
    sizes), written as folders."""
    from flax import nnx

    from experiments import gen_smoke, rm_smoke
    from experiments.demo import TINY_GENERATOR, TINY_VLM
    from rdance.world import vlm
    from rdance.world.generator import WorldGenerator
    from rdance.models.internvl.config import load_config
    from rdance.reward import folder as rm_folder
    from rdance.reward.model import RewardNet
    sizes = dict(gen_smoke.get_config().model, **(TINY_GENERATOR if tiny else {}))
    sizes["dtype"] = sizes["dtype"] or None
    WorldGenerator.write_tokenizer(f"{tmp}/tokenizer")
    gen = WorldGenerator.create(sizes, f"{tmp}/tokenizer")
    gen.export(nnx.to_pure_dict(nnx.state(gen.make_model(), nnx.Param)), f"{tmp}/generator")
    config = rm_smoke.get_config()
    if tiny:
        config.model.update(TINY_VLM)
    base = vlm.write_model_folder(config.model, config.data.image_size, f"{tmp}/rm_base")
    net = RewardNet(load_config(base), regression_head=False, rngs=nnx.Rngs(0))
    rm_folder.export(nnx.to_pure_dict(nnx.state(net, nnx.Param)), base, f"{tmp}/rm", config)
    return f"{tmp}/generator", f"{tmp}/rm"


def main(argv):
    del argv
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from experiments import finetune_smoke
    from rdance.core import sharding as sh
    from rdance.world.prompts import prompt_set
    from rdance.diffusion import generator as genlib
    from rdance.diffusion.sampler import rollout_then_step, sample
    from rdance.world import vlm
    from rdance.train.finetune_data import FinetuneExamples
    from rdance.train.finetune_loop import anchor_source
    from rdance.train.finetune_setup import build
    from rdance.data.pipeline import host_batches
    from rdance.train.loop import batch_spec

    tmp = tempfile.mkdtemp()
    gen_path, rm_path = (FLAGS.generator, FLAGS.rm) if FLAGS.generator and FLAGS.rm else random_folders(tmp, FLAGS.tiny)
    config = finetune_smoke.get_config()
    config.refl.grad_steps = FLAGS.grad_steps
    config.refl.window = max(config.refl.window, FLAGS.grad_steps)
    config.generator.path, config.reward.path = gen_path, rm_path
    mesh = sh.make_mesh((1, -1, 1))
    # Built as the loop builds it, so the compiled step (and its input shardings) is the loop's.
    setup = build(config, mesh, config.mesh.rules)
    gen, rm, graphdef, params, s = setup.gen, setup.rm, setup.graphdef, setup.trainable, setup.settings
    b, g = config.data.global_batch_size, s.samples_per_prompt
    n = b * g
    prompts = [scene.prompt for scene in prompt_set(3, b)]
    tokens = gen.tokenize(prompts)
    rm_tokens = rm.tokens(prompts, gen.image_shape, pairwise=True)
    per_sample = lambda tree: jax.tree.map(lambda x: np.repeat(x, g, axis=0), tree)  # noqa: E731
    sig = genlib.sigmas(gen, s.num_steps)
    grad_steps = s.grad_steps
    k = min(s.num_steps - (s.window + 1) // 2, s.num_steps - grad_steps)
    noise = jax.random.normal(jax.random.key(0), (n, *gen.latent_shape))
    refs = np.random.default_rng(0).integers(0, 255, (b, 1, *gen.image_shape), dtype=np.uint8)
    images = jax.random.uniform(jax.random.key(1), (n, *gen.image_shape))

    def rollout(params):
        model = nnx.merge(graphdef, params)
        return sample(gen.velocity(model, gen.condition(model, gen.frozen, per_sample(tokens))), noise, sig[: k + 1])

    x_k = jax.jit(rollout)(params)

    def graded_steps(params, steps=grad_steps):
        model = nnx.merge(graphdef, params)
        velocity = gen.velocity(model, gen.condition(model, gen.frozen, per_sample(tokens)))
        x0, _ = rollout_then_step(velocity, x_k, sig[k:], 0, steps)
        return jnp.sum(gen.decode(gen.frozen, x0) * images)   # a stand-in for the reward's pull on the pixels

    def rm_forward(images):
        return rm.pairwise_fn(rm.params, per_sample(rm_tokens), jnp.repeat(refs[:, 0], g, 0), images).sum()

    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(params)
    # The batch the loop's data source makes (anchor pairs included), so the bench follows the step.
    examples = FinetuneExamples(b, tokens, rm_tokens, refs, anchor_source(config, gen, b), gen.tokenize)
    host_batch = next(iter(host_batches(examples, global_batch_size=b, num_steps=1, seed=0)))
    batch = sh.global_batch(host_batch, mesh)

    def one_forward(params):
        model = nnx.merge(graphdef, params)
        return gen.velocity(model, gen.condition(model, gen.frozen, per_sample(tokens)))(x_k, sig[k])

    # XLA's cost analysis counts a loop's body once: the rollout (a fori_loop / scan of k steps)
    # is counted here as k forwards, and the whole step gets the k - 1 it misses.
    forward_flops = jax.jit(one_forward).lower(params).compile().cost_analysis().get("flops", float("nan"))
    # Likewise the graded scan: count one graded step (forward, backward, decode) per graded step;
    # the forward that remat repeats in the backward pass is left out.
    graded_flops = jax.jit(jax.grad(lambda p: graded_steps(p, 1))).lower(params).compile().cost_analysis().get(
        "flops", float("nan"))
    parts = [
        (f"rollout ({k} steps, no grad)", jax.jit(rollout), (params,)),
        (f"generator fwd+bwd ({grad_steps} step{'s' if grad_steps > 1 else ''}, decode)",
         jax.jit(jax.grad(graded_steps)), (params,)),
        ("RM forward", jax.jit(rm_forward), (images,)),
        ("RM forward+backward (d/dimages)", jax.jit(jax.grad(rm_forward)), (images,)),
    ]
    rows = []
    for i, (name, fn, args) in enumerate(parts):
        if i == 0:
            flops = k * forward_flops
        elif i == 1:
            flops = grad_steps * graded_flops
        else:
            flops = fn.lower(*args).compile().cost_analysis().get("flops", float("nan"))
        seconds = median_time(lambda: jax.block_until_ready(fn(*args)), FLAGS.reps)
        rows.append((name, seconds, flops))
    compiled = setup.lower(batch_spec(host_batch, mesh)).compile()
    flops = compiled.cost_analysis().get("flops", float("nan")) + (k - 1) * forward_flops
    flops += (grad_steps - 1) * graded_flops
    holder = [state]

    def run_step():
        holder[0], metrics = compiled(holder[0], batch, setup.frozen, rm.params)
        jax.block_until_ready(metrics)
    rows.append(("whole ReFL step (compiled)", median_time(run_step, FLAGS.reps), flops))

    total = rows[-1][1]
    print(f"\nReFL step, smoke config on CPU ({jax.device_count()} device(s), {os.cpu_count()} cores): "
          f"{b} prompts x {g} samples, {s.num_steps} sampler steps, k = {k}, {grad_steps} graded step(s), "
          f"anchor weight {config.anchor.weight}; median of {FLAGS.reps}")
    print(f"| {'part':<36} | seconds | share of step | GFLOP  | GFLOP/s |")
    print(f"|{'-' * 38}|---------|---------------|--------|---------|")
    for name, seconds, flops in rows:
        print(f"| {name:<36} | {seconds:7.3f} | {100 * seconds / total:12.0f}% | {flops / 1e9:6.2f} | "
              f"{flops / 1e9 / seconds:7.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
