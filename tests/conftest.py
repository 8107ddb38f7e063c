"""What tests in several folders share: 8 fake CPU devices (set before jax is imported anywhere),
how a test runs an entrypoint as a child process and reads its metrics, and the tiny random
models (a world generator and a reward model folder) made once per session."""
import os

# Tests compile far more than they run (tiny models, a few steps): unoptimised machine code
# compiles about a third faster and computes the same values (the demo's CI variant does the same).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def cpu_xla_flags(devices: int) -> str:
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}"


os.environ.setdefault("XLA_FLAGS", cpu_xla_flags(8))
# libtpu (from the test extra) is installed for the TPU fit check; tests themselves run on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# Tests that compile for a TPU topology in-process load libtpu, which takes /tmp/libtpu_lockfile
# for the process's life; child fit checks would then fail on the lock.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, "tests expect 8 fake CPU devices; is XLA_FLAGS set before jax import?"
    return devs


# --- child processes ---------------------------------------------------------------------------

def environment(devices: int = 8, cache=None, cache_min_seconds: float = 0) -> dict:
    """A child's environment: ``devices`` fake CPU devices, unbuffered output, and (``cache``) a
    compilation cache, so runs of the same program on the same devices share compiled code
    (programs that compile in under ``cache_min_seconds`` are not stored)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=cpu_xla_flags(devices))
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(cache_min_seconds))
    env.pop("PYTEST_CURRENT_TEST", None)   # a child's absl would otherwise think it runs under pytest
    return env


def run_module(module: str, *args, devices: int = 8, cache=None, cache_min_seconds: float = 0,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, as a user types it."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=environment(devices, cache, cache_min_seconds), capture_output=True, text=True,
                          timeout=timeout)


def run_two_processes(command_of, devices_each: int = 4, timeout: int = 400) -> list[str]:
    """Start ``command_of(process_id)`` for processes 0 and 1 (a two-host run on this machine,
    ``devices_each`` fake devices each); wait, check both succeeded, and return their output."""
    procs = [subprocess.Popen(command_of(i), cwd=REPO, env=environment(devices_each), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert f"process 1/2, {devices_each} local devices, {2 * devices_each} global" in outputs[1]
    return outputs


def metrics_by_step(workdir) -> dict[int, dict]:
    """WORKDIR/metrics.jsonl by step (a step's scalars and its evals merged)."""
    from rdance.train.metrics import read_records
    out: dict[int, dict] = {}
    for record in read_records(os.path.join(workdir, "metrics.jsonl")):
        out.setdefault(record["step"], {}).update(record)
    return out


def curve(workdir, key) -> list[float]:
    """``key`` at every step that logged it, in step order."""
    by_step = metrics_by_step(workdir)
    return [by_step[s][key] for s in sorted(by_step) if key in by_step[s]]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


# --- tiny random models ------------------------------------------------------------------------

TINY_GENERATOR = dict(text_dim=32, text_layers=1, text_heads=2, heads=2, head_dim=16,
                      axes_dims_rope=(4, 6, 6), double_layers=1, single_layers=1,
                      vae_channels=(8, 8), vae_latent_channels=4, vae_groups=4)


def make_generator_folder(path, seed=0) -> str:
    """A tiny random world generator folder (diffusers layout) under ``path``."""
    from rdance.world.generator import WorldGenerator
    WorldGenerator.write_tokenizer(str(path / "tokenizer"))
    gen = WorldGenerator.create(TINY_GENERATOR, str(path / "tokenizer"), seed=seed)
    return gen.export(nnx.to_pure_dict(nnx.state(gen.make_model(), nnx.Param)), str(path / "generator"))


def tiny_rm_config(paradigm="pairwise", **rm):
    """experiments/rm_smoke.py at the tiny sizes every RM test uses; ``rm``: other rm.* settings."""
    from experiments import rm_smoke
    c = rm_smoke.get_config()
    c.model.update(dict(patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                        text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1))
    c.rm.paradigm = paradigm
    c.rm.update(rm)
    return c


def make_rm_folder(path, paradigm="pairwise", **rm) -> str:
    """A tiny random reward model folder (Hugging Face InternVL layout + word tokenizer); ``rm``:
    other rm.* settings (e.g. video_frames)."""
    from rdance.models.internvl.config import load_config
    from rdance.reward.folder import export
    from rdance.reward.model import RewardNet
    from rdance.world import vlm
    config = tiny_rm_config(paradigm, **rm)
    base = vlm.write_model_folder(config.model, config.data.image_size, str(path / "base"))
    net = RewardNet(load_config(base), regression_head=paradigm == "regressive", rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    if paradigm == "regressive":  # a zero head would make every score equal
        params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
    return export(params, base, str(path / "export"), config)


TINY_CLIP = dict(width=32, layers=1, heads=2, projection_dim=16, patch_size=8, batch_size=4)


def make_clip_folder(path, steps=2) -> str:
    """A tiny world CLIP (transformers CLIPModel layout + tokenizer + preprocessor_config.json)."""
    from rdance.world.clip_model import WorldCLIPConfig, train
    return train(WorldCLIPConfig(steps=steps, **TINY_CLIP), str(path))


@pytest.fixture(scope="session")
def gen_folder(tmp_path_factory):
    return make_generator_folder(tmp_path_factory.mktemp("generator"))


@pytest.fixture(scope="session")
def rm_folder(tmp_path_factory):
    return make_rm_folder(tmp_path_factory.mktemp("rm"))


# --- parallel runs (pytest -n 2 --dist loadgroup, as the README's test command runs) ----------

# Folders whose conftest builds session fixtures (a fine-tuning run, the demo, reference models):
# their tests stay on one worker, so each fixture is built once. Every other file is its own group
# (module fixtures built once); pytest-xdist balances the groups over the workers.
SHARED_FIXTURE_FOLDERS = ("tests/train", "tests/jobs", "tests/launch", "tests/models/internvl", "tests/models/flux")


def xdist_group_of(path: str) -> str:
    relative = os.path.relpath(path, REPO).replace(os.sep, "/")
    return next((f for f in SHARED_FIXTURE_FOLDERS if relative.startswith(f + "/")), relative)


# tryfirst: xdist's own collection hook reads the mark to append "@group" to each test's id, which is
# what loadgroup schedules by; marked after it (as before 2026-12-07), no test had a group, and each
# worker built the demo, the notebook run and every other shared fixture again.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(str(item.path))))
