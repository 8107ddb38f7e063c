"""README.md and docs/ as a new user reads them: every link resolves inside the repository, every
command shown is run by a test as a user types it, and its --help lists the flags the docs give it.

A command added to the docs without an entry in RUN_BY (the test that runs it for real, at tiny
scale) fails here.
"""
import os
import re
import subprocess
import sys

import pytest

from tests.docs.commands import REPO, doc_files, documented_commands

# Each documented entrypoint -> the test file (or files, each of which must run it) that runs it
# as a user types it (a subprocess of `python -m ...`, the console script, or launch/tpu.py).
# "demo" means a stage of the demo's CI variant runs it (tests/jobs/test_demo.py, and .ci/run in a fresh venv).
RUN_BY = {
    "rdance.run.demo": "tests/jobs/test_demo.py",
    "rdance.run.ablate": "tests/jobs/test_ablate.py",
    "rdance.run.train_toy": "tests/train/test_entrypoint.py",
    "rdance.run.fit_check": "tests/train/test_entrypoint.py",
    "rdance.run.train_reward": "tests/reward/test_train_reward.py",
    "rdance.run.score": "tests/run/test_score_cli.py",
    "rdance.run.preference_set": "tests/data/test_readme_commands.py",
    "rdance.run.generate": ("tests/models/flux/test_generate.py", "tests/models/wan/test_generate.py"),
    "rdance.run.evaluate": "tests/run/test_evaluate.py",
    "rdance.run.finetune": "tests/train/conftest.py",
    "rdance.run.pretrain_generator": "demo",
    "rdance.run.judge_generators": "demo",
    "rdance-score": "tests/run/test_console_scripts.py",
    "rdance-generate": "tests/run/test_console_scripts.py",
    "rdance-fit": "tests/run/test_console_scripts.py",
}
LAUNCH_TESTS = "tests/launch/test_commands.py"
COMMANDS = documented_commands()
ENTRIES = sorted({c.entry for c in COMMANDS})


def demo_stage_modules() -> set[str]:
    from ml_collections import config_flags
    from rdance.run import demo
    config = config_flags.config_flags._LoadConfigModule("demo", os.path.join(REPO, "experiments/demo.py")).get_config("ci")
    return {stage.module for stage in demo.build_stages(config)}


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_documented_command_is_run_by_a_test(entry):
    if entry.startswith("launch/tpu.py "):
        sub = entry.split()[1]
        assert f'"{sub}"' in open(os.path.join(REPO, LAUNCH_TESTS)).read(), f"{LAUNCH_TESTS} never runs `{entry}`"
        return
    where = [c.where for c in COMMANDS if c.entry == entry]
    assert entry in RUN_BY, (f"`{entry}` is shown in {', '.join(sorted(set(where)))} but no test runs it: add a "
                             f"tiny-scale test that runs it as a user types it and name it in RUN_BY")
    test_files = RUN_BY[entry]
    if test_files == "demo":
        assert entry in demo_stage_modules(), f"{entry} is no longer a stage of the demo: give it its own test"
        return
    for test_file in (test_files,) if isinstance(test_files, str) else test_files:
        text = open(os.path.join(REPO, test_file)).read()
        assert f'"{entry}"' in text or f"'{entry}'" in text, f"{test_file} does not run `{entry}`"


def help_command(entry: str) -> list[str]:
    if entry.startswith("launch/tpu.py "):
        return [sys.executable, "launch/tpu.py", entry.split()[1], "--help"]
    if entry.startswith("rdance-"):
        return [os.path.join(os.path.dirname(sys.executable), entry), "--help"]
    return [sys.executable, "-m", entry, "--help"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_help_lists_every_flag_the_docs_use(entry):
    flags = sorted({f for c in COMMANDS if c.entry == entry for f in c.flags})
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(help_command(entry), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    missing = [f for f in flags if f"--{f}" not in text and f"--[no]{f}" not in text]
    assert not missing, f"`{' '.join(help_command(entry)[1:])}` does not list {missing}:\n{text[-3000:]}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_links_resolve_inside_the_repository(path):
    broken = []
    for target in LINK.findall(open(path).read()):
        if re.match(r"^[a-z]+://|^mailto:|^#", target):
            continue
        file = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
        if not file.startswith(REPO + os.sep) or not os.path.exists(file):
            broken.append(target)
    if "../shared" in open(path).read():
        broken.append("../shared (not part of a clone)")
    assert not broken, f"{os.path.relpath(path, REPO)} links outside the repository or to nothing: {broken}"
