"""rdance.models.attention on this machine: each implementation at a few lengths, forward and
forward + backward (gradients with respect to q, k, v), with the float32 score memory one call
keeps alive at once (estimate: [batch, heads, q, k] for xla, one q_chunk x k_chunk block per head
for chunked) and XLA's own temporary-buffer size for the compiled forward + backward.

    python bench/bench_attention.py                         # xla and chunked, 1k and 4k tokens
    python bench/bench_attention.py --lengths=1024,4096,8192 --impls=xla,chunked --reps=3
    python bench/bench_attention.py --impls=auto,chunked     # on a GPU/TPU: cudnn/splash vs chunked

Batch 1, 8 heads, head_dim 64, float32 (--dtype=bfloat16 for the kernels that need it), no mask.
Prints one table; times are medians of ``--reps`` calls after one warm-up.

Measured (2 CPU cores shared with other jobs, load ~3-4, so times are rough; median of 3): at 1024
tokens xla 119 ms forward / 212 ms forward+backward, chunked 61 / 198 ms; at 4096 tokens xla
2509 / 4595 ms with 1552 MiB of XLA temporaries, chunked 768 / 2812 ms with 78 MiB.
"""
import os
import sys

from absl import app, flags

from timing import median_time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_list("lengths", ["1024", "4096"], "Sequence lengths (queries = keys).")
flags.DEFINE_list("impls", ["xla", "chunked"], "Implementations (rdance.models.attention.IMPLS).")
flags.DEFINE_integer("heads", 8, "Attention heads.")
flags.DEFINE_integer("head_dim", 64, "Head dimension.")
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("q_chunk", 512, "Query chunk of 'chunked'.")
flags.DEFINE_integer("k_chunk", 512, "Key chunk of 'chunked'.")
flags.DEFINE_string("dtype", "float32", "Input dtype.")
flags.DEFINE_integer("reps", 3, "Timed repetitions after one warm-up; the median is reported.")
flags.DEFINE_bool("causal", False, "Causal attention.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rdance.models import attention

    b, h, d = FLAGS.batch, FLAGS.heads, FLAGS.head_dim
    chunks = dict(q_chunk=FLAGS.q_chunk, k_chunk=FLAGS.k_chunk)
    rows = []
    for length in map(int, FLAGS.lengths):
        r = np.random.default_rng(0)
        q, k, v = (jnp.asarray(r.normal(size=(b, length, h, d)), FLAGS.dtype) for _ in range(3))
        for impl in FLAGS.impls:
            name = attention.choose(impl)
            call = lambda q, k, v, impl=impl: attention.attend(q, k, v, impl=impl, causal=FLAGS.causal,  # noqa: E731
                                                               **chunks)
            fwd = jax.jit(call)
            grad = jax.jit(jax.grad(lambda q, k, v: call(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
            t_fwd = median_time(lambda: fwd(q, k, v), FLAGS.reps)
            t_grad = median_time(lambda: grad(q, k, v), FLAGS.reps)
            mem = grad.lower(q, k, v).compile().memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
            score = attention.score_bytes(b, h, length, length, impl, **chunks)
            rows.append((impl if name == impl else f"{impl} ({name})", length, t_fwd * 1e3, t_grad * 1e3,
                         score / 2**20, None if temp is None else temp / 2**20))

    print(f"\nattention on {jax.devices()[0].platform} ({jax.device_count()} devices): batch {b}, {h} heads, "
          f"head_dim {d}, {FLAGS.dtype}, causal={FLAGS.causal}, chunks {FLAGS.q_chunk}x{FLAGS.k_chunk}\n")
    print("| impl | tokens | forward ms | fwd+bwd ms | score MiB (est.) | XLA temp MiB (fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    for impl, length, tf, tg, score, temp in rows:
        temp = "n/a" if temp is None else f"{temp:.1f}"
        print(f"| {impl} | {length} | {tf:.1f} | {tg:.1f} | {score:.1f} | {temp} |")


if __name__ == "__main__":
    app.run(main)
