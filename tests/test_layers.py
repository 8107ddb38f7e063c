"""The package keeps the layers that .importlinter declares (run > jobs > world > train >
reward | diffusion > models > data > core), checked by import-linter, and the check bites: the
same contract fails on a copy of the package given one upward import."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root: str) -> subprocess.CompletedProcess:
    # PYTHONPATH first, so grimp reads the package under ``root`` and not the installed one.
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT_IMPORTS, os.path.join(root, ".importlinter"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    out = lint(REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    copy = tmp_path / "house"
    shutil.copytree(os.path.join(REPO, "rdance"), copy / "rdance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, ".importlinter"), copy / ".importlinter")
    sharding = copy / "rdance" / "core" / "sharding.py"
    sharding.write_text(sharding.read_text() + "\nfrom rdance.train import loop  # upward: core -> train\n")
    out = lint(str(copy))
    assert out.returncode != 0
    assert "rdance.core is not allowed to import rdance.train" in out.stdout
    assert "rdance.core.sharding -> rdance.train.loop" in out.stdout
