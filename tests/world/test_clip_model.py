"""The world CLIP: a short contrastive training on renders saves a transformers CLIPModel folder
that the scorer and transformers both load (and agree on), and its score ranks judged pairs as
the judge does better than chance. bench/bench_clip_world.py measures longer trainings."""
import os
import time

import jax
import numpy as np
import pytest

from rdance.reward.clip_score import CLIPScorer
from rdance.world.clip_model import EOS, WorldCLIPConfig, judge_agreement, train
from rdance.world.prompts import ObjectSpec, Scene
from rdance.world.render import render

# Sized to train in well under a minute on two busy CPU cores.
TEST_CLIP = WorldCLIPConfig(steps=150, batch_size=32, patch_size=8, width=32, layers=1, heads=2, projection_dim=32)
PAIRS = 200
MARGIN = 0.1   # chance is 0.5; its standard error at 200 pairs is 0.035


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("world_clip"))
    log = []
    started = time.time()
    train(TEST_CLIP, folder, log=lambda n, metrics: log.append(metrics))
    return folder, log, time.time() - started


def test_trains_and_saves_a_clip_model_folder(trained):
    folder, log, seconds = trained
    print(f"trained {TEST_CLIP.steps} steps in {seconds:.1f} s; loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert log[-1]["loss"] < log[0]["loss"] - 0.5, log
    scorer = CLIPScorer.from_pretrained(folder)
    ids, mask = scorer.tokenize(["a red circle", "two blue squares"])
    eos = scorer.tokenizer.convert_tokens_to_ids(EOS)
    assert ids[0, 3] == eos and ids[1, 3] == eos and mask[0].sum() == 4   # pooled at the end token


def test_transformers_loads_it_and_agrees(trained):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder, _, _ = trained
    scorer = CLIPScorer.from_pretrained(folder)
    scenes = [Scene((ObjectSpec("red", "circle"),)), Scene((ObjectSpec("blue", "square", 2),))]
    images = np.stack([render(s) for s in scenes])
    prompts = [s.prompt for s in scenes]
    with jax.default_matmul_precision("highest"):
        ours = scorer.score(images, prompts)
    ids, mask = scorer.tokenize(prompts)
    ref = transformers.CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  pixel_values=torch.tensor(scorer.preprocess(images).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(ours, np.diag(out.logits_per_image.numpy()), atol=1e-4)


def test_agrees_with_the_judge_better_than_chance(trained):
    folder, _, _ = trained
    agreement = judge_agreement(CLIPScorer.from_pretrained(folder), PAIRS)
    print(f"CLIP ranks {agreement.rate:.3f} of {agreement.pairs} judged pairs as the judge does (chance 0.5)")
    assert agreement.rate > 0.5 + MARGIN, agreement
