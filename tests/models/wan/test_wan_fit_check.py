"""The fit check of Wan fine-tuning (``rdance.run.fit_check --entry=rdance.run.finetune
--config=experiments/finetune_wan.py:SIZE``) at the tiny preset: the ReFL step of the 1.3b recipe
at toy sizes, built from architecture dicts alone and lowered for a TPU slice's devices. The
compile for the TPU (minutes on a loaded 2-core host even at this size) is left to the command;
the lowering is what shares the step with training (tests/train/test_fit_check.py)."""
from experiments import finetune_wan
from rdance.run import fit_check
from rdance.train import finetune_fit


def test_wan_fit_check_lowers_the_refl_step_for_a_tpu_slice():
    devices, _ = fit_check.topology_devices("v5p:2x2x1")
    step = finetune_fit.lower_step(finetune_wan.get_config("tiny"), devices)
    assert dict(step.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert step.batch.startswith("refl, 4 prompts x 2 samples of 9 frames of 32x32 in 1 micro-batch")
    parts = ("generator (trains)", "umt5 (frozen)", "vae (frozen)", "reward model (frozen)")
    assert set(step.params) == set(parts) and all(step.params[p] > 0 for p in parts)
    assert "stablehlo" in step.lowered.as_text()[:10000]
