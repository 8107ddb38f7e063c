"""InternVL on CPU: rdance (JAX) against transformers (PyTorch), same weights, inputs and threads.

    python bench/bench_internvl.py [--threads 2] [--skip-memory]

Prints one table: forward latency and 32-token greedy generation of a ~100M-parameter config,
and peak host memory while rdance loads a ~1 GB float32 checkpoint.
"""
import argparse
import os
import subprocess
import sys
import tempfile

from timing import median_time


def _configs():
    import transformers
    vision = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                  image_size=224, patch_size=14)
    text = dict(model_type="qwen2", hidden_size=768, num_hidden_layers=8, num_attention_heads=12,
                num_key_value_heads=2, intermediate_size=2048, vocab_size=32000)
    small = transformers.InternVLConfig(vision_config=vision, text_config=text, image_token_id=31999,
                                        image_seq_length=64)
    big_text = dict(text, hidden_size=1536, num_hidden_layers=10, num_attention_heads=12,
                    intermediate_size=4608)
    big = transformers.InternVLConfig(vision_config=vision, text_config=big_text,
                                      image_token_id=31999, image_seq_length=64)
    return small, big


def speed(threads: int, folder: str):
    import numpy as np
    import torch
    import transformers
    from rdance.models import internvl

    torch.set_num_threads(threads)
    small, _ = _configs()
    torch.manual_seed(0)
    hf = transformers.InternVLForConditionalGeneration(small).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    hf.save_pretrained(folder)
    model = internvl.load(folder)

    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(1, 30000, 32), np.full(64, 31999), rng.integers(1, 30000, 32)])[None]
    mask = np.ones_like(ids)
    pixels = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    t_ids, t_pix, t_mask = torch.tensor(ids), torch.tensor(pixels), torch.tensor(mask)

    def hf_forward():
        with torch.no_grad():
            hf(input_ids=t_ids, pixel_values=t_pix, attention_mask=t_mask)

    def hf_generate():
        with torch.no_grad():
            hf.generate(input_ids=t_ids, pixel_values=t_pix, attention_mask=t_mask, max_new_tokens=32,
                        min_new_tokens=32, do_sample=False, pad_token_id=0)

    rows = [("forward, 128 tokens + 1 tile", median_time(hf_forward, 5),
             median_time(lambda: model.logits(ids, pixels, mask), 5)),
            ("generate 32 tokens (greedy)", median_time(hf_generate, 3),
             median_time(lambda: model.generate(ids, pixels, mask, max_new_tokens=32).tokens, 3))]
    return n_params, rows


def measure_load(folder: str):
    """Run in a child process: RSS before loading, peak RSS while loading (bytes)."""
    import resource

    import jax
    import psutil
    from rdance.models import internvl
    jax.devices()
    before = psutil.Process().memory_info().rss
    model = internvl.load(folder)
    jax.block_until_ready(model.state)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(before, peak)


def memory(folder: str):
    import torch
    import transformers
    _, big = _configs()
    torch.manual_seed(0)
    transformers.InternVLForConditionalGeneration(big).save_pretrained(folder)
    del torch
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    out = subprocess.run([sys.executable, __file__, "--measure-load", folder], capture_output=True,
                         text=True, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    before, peak = map(int, out.stdout.split()[-2:])
    return size, before, peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--measure-load")
    args = parser.parse_args()
    if args.measure_load:
        return measure_load(args.measure_load)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # XLA's CPU backend uses one thread per core; torch gets the same count.
    with tempfile.TemporaryDirectory() as tmp:
        n_params, rows = speed(args.threads, os.path.join(tmp, "small"))
        print(f"\nInternVL, {n_params / 1e6:.0f}M parameters, float32, {args.threads} CPU threads, batch 1")
        print(f"| {'task':<30} | {'transformers':>12} | {'rdance':>9} | {'speed-up':>8} |")
        print(f"|{'-' * 32}|{'-' * 14}|{'-' * 11}|{'-' * 10}|")
        for name, t_hf, t_rd in rows:
            print(f"| {name:<30} | {t_hf * 1e3:>9.1f} ms | {t_rd * 1e3:>6.1f} ms | {t_hf / t_rd:>7.2f}x |")
        if not args.skip_memory:
            size, before, peak = memory(os.path.join(tmp, "big"))
            print(f"| {'load ' + f'{size / 2**30:.2f} GiB checkpoint':<30} | peak RSS {peak / 2**30:.2f} GiB, "
                  f"{(peak - before) / 2**30:.2f} GiB above start = {(peak - before) / size:.2f}x size |")


if __name__ == "__main__":
    main()
