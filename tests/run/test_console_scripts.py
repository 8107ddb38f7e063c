"""`--help` of every console script (setup.py) and of its `python -m` form: exit status 0, the
module's description and every flag the module defines (or declares a key flag)."""
import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = {"rdance-score": "rdance.run.score", "rdance-generate": "rdance.run.generate", "rdance-fit": "rdance.run.fit_check"}


def module_help(module: str) -> tuple[str, set[str]]:
    """The first line of the module's docstring and the flags it defines, read from its source
    (importing the modules side by side would define their same-named flags twice)."""
    tree = ast.parse(open(os.path.join(REPO, *module.split(".")) + ".py").read())
    names = {call.args[0].value for call in ast.walk(tree)
             if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
             and (call.func.attr.startswith("DEFINE_") or call.func.attr == "declare_key_flag")
             and call.args and isinstance(call.args[0], ast.Constant)}
    return ast.get_docstring(tree).splitlines()[0], names


@pytest.mark.parametrize("form", ["console script", "python -m"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_the_description_and_every_flag(script, form):
    module = SCRIPTS[script]
    command = ([os.path.join(os.path.dirname(sys.executable), script)] if form == "console script"
               else [sys.executable, "-m", module])
    result = subprocess.run([*command, "--help"], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    description, names = module_help(module)
    assert len(names) >= 2 and description in result.stdout
    missing = [n for n in sorted(names) if f"--{n}:" not in result.stdout and f"--[no]{n}:" not in result.stdout]
    assert not missing, f"{script} ({form}) --help does not list {missing}:\n{result.stdout}"


def test_a_bad_flag_is_one_line_naming_it():
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rdance-score"), "--rm=x", "--input=y",
                             "--batch_size=0"], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: flag --batch_size=0: 0 is not a positive integer (see --help)"
