"""Shared by the launcher tests: the launcher module, a way to run it, and a fake gcloud.

The fake gcloud is an executable put first on PATH. It appends its arguments (one JSON list per
call) to a record file and answers from a script of replies: the first rule whose substrings all
occur in the joined arguments gives its next reply (its last one once the others are used up);
with no matching rule it prints nothing and exits 0.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAUNCHER = os.path.join(REPO, "launch", "tpu.py")

FAKE_GCLOUD = """#!{python}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
rules_path = os.environ["FAKE_GCLOUD_RULES"]
rules = json.load(open(rules_path)) if os.path.exists(rules_path) else []
line = " ".join(sys.argv[1:])
for i, rule in enumerate(rules):
    if all(part in line for part in rule["match"]):
        used_path = rules_path + ".used"
        used = json.load(open(used_path)) if os.path.exists(used_path) else {{}}
        n = used.get(str(i), 0)
        used[str(i)] = n + 1
        json.dump(used, open(used_path, "w"))
        reply = rule["replies"][min(n, len(rule["replies"]) - 1)]
        sys.stdout.write(reply.get("stdout", ""))
        sys.stderr.write(reply.get("stderr", ""))
        sys.exit(reply.get("rc", 0))
"""


@pytest.fixture(scope="session")
def tpu():
    """launch/tpu.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("rdance_launch_tpu", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class FakeGcloud:
    def __init__(self, root):
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        path = self.bin / "gcloud"
        path.write_text(FAKE_GCLOUD.format(python=sys.executable))
        path.chmod(0o755)
        self.record = root / "gcloud_calls.jsonl"
        self.rules = root / "gcloud_rules.json"
        self.env = dict(os.environ, PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                        FAKE_GCLOUD_RECORD=str(self.record), FAKE_GCLOUD_RULES=str(self.rules))

    def reply(self, rules):
        """rules: [(substrings, [reply, ...]), ...]; a reply is a dict of stdout, stderr, rc."""
        self.rules.write_text(json.dumps([{"match": m, "replies": r} for m, r in rules]))

    def calls(self):
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def clear(self):
        self.record.unlink(missing_ok=True)


@pytest.fixture
def gcloud(tmp_path):
    return FakeGcloud(tmp_path / "fake_gcloud")


@pytest.fixture
def launch(tmp_path):
    """Run `python launch/tpu.py ARGS` as a user would, from a scratch folder."""
    def run(*args, env, timeout=60):
        return subprocess.run([sys.executable, LAUNCHER, *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)
    return run
