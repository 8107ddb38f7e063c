"""What the benchmarks that race rdance against a PyTorch reference share: one thread count for
both runtimes, a median of timed calls, and the comparison table."""
import os
import sys
import time


def use_cpu_threads(threads: int):
    """XLA's CPU thread count; must run before jax starts its thread pools (before its first use)."""
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def median_time(fn, reps: int, warm_up: bool = True) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after one warm-up call (jax compiles there;
    ``warm_up=False`` when the caller has just called it, e.g. to compare outputs). Each result is
    waited for (jax dispatches asynchronously; other values pass through)."""
    import jax
    if warm_up:
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def print_comparison(title: str, rows):
    """rows of (what, params, input, torch seconds, rdance seconds, max abs difference); the
    speed-up is torch / rdance, so above 1 means rdance is faster."""
    print(f"\n{title}")
    print(f"| {'what':<22} | params | {'input':<26} | rdance (jax) s | torch s | torch/jax | max abs diff |")
    print(f"|{'-' * 24}|--------|{'-' * 28}|----------------|---------|-----------|--------------|")
    for what, n, shape, t_ref, t_ours, diff in rows:
        print(f"| {what:<22} | {n:>6} | {shape:<26} | {t_ours:>14.3f} | {t_ref:>7.3f} | {t_ref / t_ours:>8.2f}x "
              f"| {diff:>12.1e} |")
    sys.stdout.flush()
