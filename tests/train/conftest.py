"""The tiny fine-tuning settings every fine-tuning test here runs with, and the reference run the
others compare with (the tiny generator and RM folders are the session's, from tests/conftest.py)."""
import subprocess
import sys

import pytest

from experiments import finetune_smoke
from tests.conftest import REPO, environment

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


def tiny_config(gen_folder, rm_folder, **overrides):
    c = finetune_smoke.get_config()
    for key, value in {**TINY, "generator.path": gen_folder, "reward.path": rm_folder, **overrides}.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def tiny_flags(gen_folder, rm_folder, **overrides) -> list[str]:
    values = {**TINY, "generator.path": gen_folder, "reward.path": rm_folder, **overrides}
    return [f"--config.{k}={v}" for k, v in values.items()]


def command(workdir, flags) -> list[str]:
    return [sys.executable, "-m", "rdance.run.finetune", "--config=experiments/finetune_smoke.py",
            f"--workdir={workdir}", *flags]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, gen_folder, rm_folder, compile_cache):
    """Uninterrupted ReFL, as a user runs it, on 8 devices (data, FSDP and tensor parallel)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    result = subprocess.run(command(workdir, tiny_flags(gen_folder, rm_folder, **REFERENCE)), cwd=REPO,
                            env=environment(cache=compile_cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
