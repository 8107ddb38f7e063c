"""An untrained reward-model folder written by rdance.reward.folder, exported, loads back as is."""
import jax
import numpy as np
import pytest
from flax import nnx

from rdance.models.internvl.config import load_config
from rdance.reward import folder as rm_folder
from rdance.reward.api import RewardModel
from rdance.reward.model import RewardNet
from tests.conftest import tiny_rm_config


@pytest.mark.parametrize("paradigm", ["pairwise", "regressive"])
def test_an_untrained_folder_round_trips_through_export_and_load(tmp_path, paradigm):
    config = tiny_rm_config(paradigm)
    base = rm_folder.write_model_folder(config.model, config.data.image_size, str(tmp_path / "base"))
    tokenizer = rm_folder.load_tokenizer(base)
    assert tokenizer.unk_token not in tokenizer.tokenize(" ".join(rm_folder.template_corpus()))
    vlm_config = load_config(base)
    assert vlm_config.text.vocab_size == rm_folder.padded_vocab(len(tokenizer))
    net = RewardNet(vlm_config, regression_head=paradigm == "regressive", rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    export = rm_folder.export(params, base, str(tmp_path / "export"), config)

    rm = RewardModel.from_pretrained(export)
    assert rm.paradigm == paradigm and rm.settings["max_prompt_tokens"] == config.rm.max_prompt_tokens
    assert rm.template.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert sorted(rm.params) == sorted(params)
    for got, want in zip(jax.tree.leaves(rm.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
