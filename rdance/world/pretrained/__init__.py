"""The synthetic world's pretrained models, shipped inside rdance (a few MB), so that the demo
starts where the paper starts: from a pretrained generator and pretrained VLMs of two sizes, which
it then turns into reward models and fine-tunes against. Each was made by a documented command
whose full run takes longer than the demo's 30 minutes (``MANIFEST``'s ``made_by`` and ``wall``);
``python -m rdance.run.demo --config.pretrained=false`` retrains them all in the demo's own
stages instead (at the demo's shorter budgets).

- ``generator``: experiments/gen_smoke.py (the VAE, then 9000 transformer steps).
- ``vlm_small``, ``vlm_large``: experiments/vlm_smoke.py:small and experiments/vlm_smoke.py (1500
  caption-pretraining steps each); the demo's small and large reward models start from them.

``manifest.json`` records, per model, the command, the commit, the wall time, its scores and every
file's SHA-256; :func:`folder` checks them, so a truncated copy (a Git LFS pointer, a partial
download) is an error naming the file, not a model that loads and draws noise. Refresh one with

    python -m rdance.world.pretrained --name=generator --export=WORKDIR/export \\
        --made_by="python -m rdance.run.pretrain_generator ..." --wall=36:25 --scores='{"judge": 0.55}'
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "manifest.json"
NAMES = ("generator", "vlm_small", "vlm_large")
# What makes a folder a finished export of each kind (rdance.run.pretrain_generator, train_reward).
MARKERS = {"generator": "generator.json", "vlm_small": "reward_config.json", "vlm_large": "reward_config.json"}


class PretrainedError(RuntimeError):
    pass


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_of(folder: str) -> list[str]:
    """Every file under ``folder``, as sorted relative paths."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)


def manifest(root: str | None = None) -> dict:
    path = os.path.join(root or ROOT, MANIFEST)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise PretrainedError(f"no pretrained world model {name!r}: the shipped ones are {', '.join(NAMES)}")


def folder(name: str, root: str | None = None, verify: bool = True) -> str:
    """The shipped folder of model ``name`` (in ``root``, default this package's folder), its files
    checked against the manifest."""
    _check_name(name)
    root = root or ROOT
    entry = manifest(root).get(name)
    path = os.path.join(root, name)
    if entry is None or not os.path.isdir(path):
        raise PretrainedError(f"the pretrained world model {name!r} is not in {root} (manifest.json lists "
                              f"{', '.join(manifest(root)) or 'nothing'}): train it with the demo "
                              "(--config.pretrained=false) or restore the folder from the repository")
    if verify:
        for rel, want in entry["files"].items():
            file = os.path.join(path, rel)
            if not os.path.isfile(file):
                raise PretrainedError(f"{file} is missing from the shipped {name!r} model: restore it from the "
                                      "repository (git checkout -- rdance/world/pretrained)")
            if sha256(file) != want:
                raise PretrainedError(f"{file} differs from the one the manifest records (SHA-256): a Git LFS "
                                      "pointer, a partial copy or a local edit; restore it from the repository")
    return path


def ship(name: str, export: str, made_by: str, wall: str, scores: dict, root: str | None = None) -> str:
    """Copy the export folder ``export`` in as model ``name`` and record it in the manifest. The new
    folder is written beside the old one and swapped in whole, so a failure leaves the old one."""
    _check_name(name)
    root = root or ROOT
    if not os.path.isfile(os.path.join(export, MARKERS[name])):
        raise PretrainedError(f"{export} has no {MARKERS[name]}: give the export folder of a finished "
                              f"{'pretrain_generator' if name == 'generator' else 'train_reward'} run")
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
    try:
        shutil.copytree(export, os.path.join(staging, name))
        files = {rel: sha256(os.path.join(staging, name, rel)) for rel in files_of(os.path.join(staging, name))}
        target = os.path.join(root, name)
        if os.path.isdir(target):
            os.rename(target, os.path.join(staging, "old"))
        os.rename(os.path.join(staging, name), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entries = manifest(root)
    entries[name] = dict(made_by=made_by, commit=_commit(), wall=wall, scores=scores, files=files)
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
        f.write("\n")
    return target


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Ship an export folder as one of the world's pretrained models")
    parser.add_argument("--name", required=True, choices=NAMES)
    parser.add_argument("--export", required=True, help="the finished run's export folder")
    parser.add_argument("--made_by", required=True, help="the command that made it, as a user would type it")
    parser.add_argument("--wall", required=True, help="its wall time and machine, e.g. '36:25 on 2 cores'")
    parser.add_argument("--scores", default="{}", help="its scores, as JSON")
    args = parser.parse_args(argv)
    try:
        scores = json.loads(args.scores)
        print(ship(args.name, args.export, args.made_by, args.wall, scores))
    except (PretrainedError, json.JSONDecodeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
