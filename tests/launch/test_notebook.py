"""launch/colab_smoke.ipynb executed top to bottom on the CPU with nbclient, as CI runs it.

The kernel starts in launch/ of this checkout, where rdance is installed, so the notebook must
skip the install (nothing is downloaded). Only WORKDIR is set, in a cell inserted after the
parameters cell. JAX_PLATFORMS and XLA_FLAGS are taken away so that the notebook's own hardware
check decides, and TensorFlow is made unimportable, as on a Colab TPU runtime.
"""
import base64
import io
import json
import os
import re

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import REPO

NOTEBOOK = os.path.join(REPO, "launch", "colab_smoke.ipynb")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook")
    work = root / "work"
    hidden = root / "no_tensorflow" / "tensorflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("TensorFlow is hidden: the smoke notebook must not need it")\n')

    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    defaults = {}
    exec(nb.cells[tagged[0]].source, defaults)   # plain assignments
    steps = {"reward_model": defaults["RM_STEPS"], "generator": defaults["GEN_STEPS"], "finetune": defaults["FT_STEPS"]}
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(f"WORKDIR = {str(work)!r}"))

    with pytest.MonkeyPatch.context() as mp:   # the kernel inherits this environment
        mp.delenv("JAX_PLATFORMS", raising=False)
        mp.delenv("XLA_FLAGS", raising=False)
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")])))
        client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": os.path.join(REPO, "launch")}})
        client.execute()   # raises CellExecutionError, with the cell and its traceback, on the first error
    return nb, work, steps


def outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.outputs


def text_of(nb) -> str:
    return "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream")


def metrics(workdir) -> dict[int, dict]:
    by_step = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        record = json.loads(line)
        by_step.setdefault(record["step"], {}).update(record)
    return by_step


def printed(text: str, pattern: str) -> float:
    found = re.findall(pattern, text, re.M)
    assert len(found) == 1, f"expected one line matching {pattern!r}"
    return float(found[0])


def test_every_cell_ran_without_error(executed):
    nb = executed[0]
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    assert not [o for o in outputs(nb) if o.output_type == "error"]


def test_finds_no_accelerator_and_runs_on_the_cpu(executed):
    text = text_of(executed[0])
    assert "no accelerator found: JAX_PLATFORMS=cpu" in text
    assert "platform: cpu" in text and "jax.devices(): [CpuDevice(id=0)]" in text


def test_skips_the_install_in_a_checkout(executed):
    text = text_of(executed[0])
    assert f"rdance is already installed from the checkout {REPO}: skipping the install" in text
    assert not re.search(r"^\$ (git|\S*python\S* -m pip)", text, re.M)


def test_runs_each_entrypoint_to_its_last_step_and_exports(executed):
    nb, work, steps = executed
    text = text_of(nb)
    for module, run in [("train_reward", "reward_model"), ("pretrain_generator", "generator"), ("finetune", "finetune")]:
        assert re.search(rf"^\$ python -m rdance\.run\.{module} --config=experiments/\S+ --workdir={work / run} ", text, re.M)
        assert max(metrics(work / run)) == steps[run]
        assert os.listdir(work / run / "export")
        assert (work / f"{run}.log").stat().st_size > 0
    assert "reference bank built" in text and "exported the fine-tuned generator" in text


def test_prints_the_metrics_the_runs_wrote(executed):
    nb, work, steps = executed
    text = text_of(nb)
    rm, ft = metrics(work / "reward_model"), metrics(work / "finetune")
    last, rm_last = steps["finetune"], steps["reward_model"]
    assert printed(text, rf"^  train_reward loss: .* -> (\S+) \(step {rm_last}\)$") == pytest.approx(
        rm[rm_last]["loss"], abs=5e-5)
    for key in ("reward/mean", "eval/judge_ema"):
        assert printed(text, rf"^  finetune {key}: .* -> (\S+) \(step {last}\)$") == pytest.approx(ft[last][key], abs=5e-5)
    assert np.isfinite(ft[last]["reward/mean"]) and 0 < ft[last]["reward/mean"] < 1


def test_shows_a_sample_grid_of_the_runs_generators(executed):
    nb, work, steps = executed
    images = [o.data["image/png"] for o in outputs(nb) if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 1
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0]))).convert("RGB"))
    np.testing.assert_array_equal(shown, np.asarray(Image.open(work / "samples.png").convert("RGB")))
    assert shown.shape[0] >= 3 * 32 and shown.shape[1] >= 8 * 32    # three rows of the 8 held-out prompts
    text = text_of(nb)
    assert printed(text, r"^judge target: (\S+)$") == 1.0           # the faithful renders pass the judge
    # Same prompts, noise and sampler as fine-tuning's evaluation: the run's own judge numbers.
    ft = metrics(work / "finetune")
    assert printed(text, r"^judge pretrained: (\S+)$") == pytest.approx(ft[0]["eval/judge"], abs=5e-5)
    assert printed(text, r"^judge fine-tuned: (\S+)$") == pytest.approx(ft[steps["finetune"]]["eval/judge_ema"], abs=5e-5)
    assert len(re.findall(r"^column \d: \w", text, re.M)) == 8
