"""A tiny random world generator and a tiny random reward model (made once per session), the tiny
fine-tuning settings every test here runs with, and the reference run the others compare with."""
import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from experiments import finetune_smoke
from rdance.world.generator import WorldGenerator
from tests.reward.conftest import make_rm_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_GENERATOR = dict(text_dim=32, text_layers=1, text_heads=2, heads=2, head_dim=16,
                      axes_dims_rope=(4, 6, 6), double_layers=1, single_layers=1)
# --config.* overrides shared by in-process configs and subprocess command lines.
TINY = {
    "sampler.num_steps": 4, "refl.window": 2, "data.train_prompts": 16, "data.eval_prompts": 8,
    "data.global_batch_size": 8, "data.samples_per_prompt": 2, "bank.num_samples": 4, "bank.chunk": 16,
    "monitor.window": 4, "monitor.eval_every": 0, "monitor.eval_samples": 1, "monitor.grid_every": 0, "monitor.eval_chunk": 16,
    "monitor.grid_size": 8, "train.log_every": 1, "train.checkpoint_every": 2, "optim.learning_rate": 1e-3,
    # The recipe's anchor doubles a tiny step's work; test_rwr_with_lora_anchor_and_accumulation covers it.
    "anchor.weight": 0.0,
    # Unoptimised machine code compiles about twice as fast; these runs are a few steps long.
    "train.compiler_options": "xla_backend_optimization_level=0,xla_llvm_disable_expensive_passes=true",
}
# The reference run that sharded, resumed and two-process runs are compared with.
REFERENCE = {"train.steps": 10, "monitor.eval_every": 5, "mesh.shape": (2, 2, 2)}


def make_generator_folder(path, seed=0) -> str:
    WorldGenerator.write_tokenizer(str(path / "tokenizer"))
    gen = WorldGenerator.create(TINY_GENERATOR, str(path / "tokenizer"), seed=seed)
    return gen.export(nnx.to_pure_dict(nnx.state(gen.make_model(), nnx.Param)), str(path / "generator"))


@pytest.fixture(scope="session")
def gen_folder(tmp_path_factory):
    return make_generator_folder(tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="session")
def rm_folder(tmp_path_factory):
    return make_rm_folder(tmp_path_factory.mktemp("rm"))


def tiny_config(gen_folder, rm_folder, **overrides):
    c = finetune_smoke.get_config()
    for key, value in {**TINY, "generator.path": gen_folder, "reward.path": rm_folder, **overrides}.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def tiny_flags(gen_folder, rm_folder, **overrides) -> list[str]:
    values = {**TINY, "generator.path": gen_folder, "reward.path": rm_folder, **overrides}
    return [f"--config.{k}={v}" for k, v in values.items()]


def environment(devices=8, cache=None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if cache:  # runs of the same program on the same devices share their compiled code
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def command(workdir, flags) -> list[str]:
    return [sys.executable, "-m", "rdance.run.finetune", "--config=experiments/finetune_smoke.py",
            f"--workdir={workdir}", *flags]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, gen_folder, rm_folder, compile_cache):
    """Uninterrupted ReFL, as a user runs it, on 8 devices (data, FSDP and tensor parallel)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = subprocess.run(command(workdir, tiny_flags(gen_folder, rm_folder, **REFERENCE)), cwd=REPO,
                            env=environment(cache=compile_cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def records(workdir) -> dict[int, dict]:
    """metrics.jsonl by step (a step's scalars and its eval merged)."""
    out: dict[int, dict] = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        record = json.loads(line)
        out.setdefault(record["step"], {}).update(record)
    return out


def curve(workdir, key) -> list[float]:
    by_step = records(workdir)
    return [by_step[s][key] for s in sorted(by_step) if key in by_step[s]]
