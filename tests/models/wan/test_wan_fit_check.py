"""The fit check of Wan fine-tuning (``rdance.run.fit_check --entry=rdance.run.finetune
--config=experiments/finetune_wan.py:SIZE``) at the tiny preset: the ReFL step of the 1.3b recipe
at toy sizes, built from architecture dicts alone and lowered for a TPU slice's devices. The
compile for the TPU (minutes on a loaded 2-core host even at this size) is left to the command;
the lowering is what shares the step with training (tests/train/test_fit_check.py)."""
import pytest

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


def test_seq_layout_splits_one_prompt_over_every_chip():
    """',seq': a micro-batch of one prompt, every chip on 'tensor', tokens and parameters over it;
    the tiny step lowers so for v5p:2x2x1."""
    c = finetune_wan.get_config("1.3b+8b,seq")
    assert c.mesh.shape == (1, 1, -1) and c.optim.grad_accum_steps == c.data.global_batch_size == 8
    rules = dict(c.mesh.rules)
    assert rules["tokens"] == rules["embed"] == "tensor" and rules["heads"] is None and rules["mlp"] is None
    assert c.reward.path.endswith("rm-video-8b/export")
    with pytest.raises(ValueError, match="layout 'fsdp' after ','"):
        finetune_wan.get_config("1.3b,fsdp")
    devices, _ = fit_check.topology_devices("v5p:2x2x1")
    step = finetune_fit.lower_step(finetune_wan.get_config("tiny,seq"), devices)
    assert dict(step.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 4}
    assert step.batch.startswith("refl, 4 prompts x 2 samples of 9 frames of 32x32 in 4 micro-batches")
