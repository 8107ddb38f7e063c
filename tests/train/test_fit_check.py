"""The fine-tuning fit check: the ReFL step of a FLUX-shaped generator and an InternVL-shaped RM,
built from architecture dicts alone (no folders, no weights) and compiled for a TPU slice.

This file is also the tiny config the command line reads (``get_config``): FLUX.1-dev's and
InternVL3's structure at toy sizes (guidance embeds, T5 and CLIP encoders, a 16-channel-style VAE
with down/up blocks, pairwise RM), so the compile takes seconds, not minutes.
"""
import os
import subprocess
import sys

import ml_collections

from experiments import finetune_flux_dev

from tests.conftest import REPO


TINY_FLUX = dict(
    transformer=dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                     in_channels=16, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                     axes_dims_rope=(4, 6, 6)),
    vae=dict(block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
    scheduler=dict(shift=3.0, use_dynamic_shifting=True),
    text_encoder=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=8),
    text_encoder_2=dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4),
)
TINY_RM = dict(
    model_type="internvl", downsample_ratio=0.5, projector_hidden_act="gelu", tie_word_embeddings=True,
    vision_feature_layer=-1, vision_feature_select_strategy="default",
    vision_config=dict(model_type="internvl_vision", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, image_size=[32, 32], patch_size=[8, 8], norm_type="layer_norm",
                       use_qk_norm=False, use_mean_pooling=True, layer_scale_init_value=0.1),
    text_config=dict(model_type="qwen2", vocab_size=1024, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                     max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6, hidden_act="silu",
                     tie_word_embeddings=True))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """experiments/finetune_flux_dev.py at toy sizes; 'no_architecture': without the generator's
    architecture (and a generator.path that is no folder), the bad input the fit check explains."""
    c = finetune_flux_dev.get_config("1b")
    c.generator.update(dict(architecture=TINY_FLUX, height=32, width=32, max_sequence_length=8))
    c.reward.architecture = dict(config=TINY_RM, reward_config=dict(max_prompt_tokens=120, max_tiles=1))
    c.sampler.num_steps, c.refl.window = 4, 2
    c.data.global_batch_size, c.monitor.window = 4, 4
    c.anchor.weight = 0.0   # the anchor's VAE encode and flow-matching pass would double the compile
    if arg == "no_architecture":
        c.generator.architecture = {}
    return c


def fit_check(*flags):
    return subprocess.run([sys.executable, "-m", "rdance.run.fit_check", "--entry=rdance.run.finetune", *flags],
                          cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=600)


def test_finetune_fit_check_compiles_the_refl_step_for_a_tpu_slice():
    result = fit_check(f"--config={__file__}", "--topology=v5e:2x2")
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    rows = dict(map(str.strip, line.strip().split("  ", 1)) for line in result.stdout.splitlines() if line.strip())
    assert rows["devices"] == "4" and rows["mesh"] == "{'data': 1, 'fsdp': 4, 'tensor': 1}"
    assert rows["step"].startswith("refl, 4 prompts x 2 samples of 32x32")
    parts = ("generator (trains)", "t5 (frozen)", "clip (frozen)", "vae (frozen)", "reward model (frozen)")
    counts = [int(rows[p].replace(",", "")) for p in parts]
    assert all(n > 0 for n in counts) and sum(counts) == int(rows["parameters"].replace(",", ""))
    assert rows["HBM per device"] == "16.000 GiB"
    peak, unit = rows["peak per device"].split()
    assert float(peak) > 0 and unit in ("MiB", "GiB")
    assert rows["fits"].startswith("yes")
    flops, unit = rows["FLOPs per step"].split(" ", 1)
    assert float(flops) > 0 and unit == "per device (XLA cost analysis)"
    estimate = rows["roofline estimate"]
    assert estimate.endswith("TPU v5e; communication not counted)") and "(estimate: the larger of" in estimate
    assert float(estimate.split()[0]) > 0
    # The rollout without gradient runs to a random stop step: a loop of unknown trip count,
    # counted once, and the report says its FLOPs are undercounted.
    assert rows["loops"].startswith("1 while loop(s), 0 of known trip count")
    assert rows["lower bounds"].startswith("1 loop(s) of unknown trip count, counted once")


def test_finetune_fit_check_explains_a_missing_architecture():
    result = fit_check(f"--config={__file__}:no_architecture", "--topology=v5e:2x2")
    assert result.returncode != 0
    assert "error: generator.path='/path/to/FLUX.1-dev' is not a folder and generator.architecture is empty" \
        in result.stderr, result.stderr[-3000:]


def test_training_and_the_fit_check_lower_the_same_step(tmp_path, monkeypatch, gen_folder, rm_folder, devices):
    """finetune() and the fit check both build the step with finetune_setup.build (real, abstract):
    on the same devices, the program the fit check lowers from config files alone is the one
    training compiles (the same text), its memory is training's, and a budget below its peak is
    reported as not fitting."""
    from rdance.run import fit_check as fit_check_module
    from rdance.train import finetune_fit, finetune_setup
    from rdance.train.finetune_loop import finetune
    from tests.train.conftest import tiny_config

    config = tiny_config(gen_folder, rm_folder, **{"train.steps": 1, "mesh.shape": (1, 2, 1), "lora.rank": 4,
                                                   "anchor.weight": 0.5})
    lowered = []
    lower = finetune_setup.Setup.lower
    monkeypatch.setattr(finetune_setup.Setup, "lower", lambda self, batch: lowered.append(lower(self, batch))
                        or lowered[-1])
    result = finetune(config, str(tmp_path), devices=devices[:2])
    assert len(lowered) == 1
    training = lowered[0].as_text()

    fit = finetune_fit.lower_step(config, devices[:2])
    assert fit.lowered.as_text() == training
    assert fit.params["LoRA factors (train)"] > 0 and fit.params["reward model (frozen)"] > 0

    peak = result.compiled_memory["peak"]
    report = fit_check_module.finetune_step_report(config, devices[:2], hbm=peak - 1)
    assert {k: report[k] for k in result.compiled_memory} == result.compiled_memory
    assert not fit_check_module.fits(report)
    assert "NO, it does not fit" in fit_check_module.format_report(report)
    assert fit_check_module.fits(dict(report, hbm=peak))
