"""A reward-model folder damaged one way at a time: one ConfigError naming the file, the key, what
was expected and what it holds, raised before any weight is read."""
import json
import re
import shutil

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from rdance.run import score
from rdance.models.internvl import ConfigError
from rdance.reward.api import RewardModel


def edit_json(name, change):
    def damage(folder):
        file = folder / name
        file.write_text(json.dumps(change(json.loads(file.read_text()))))
    return damage


def set_key(section, key, value):
    def change(d):
        (d[section] if section else d)[key] = value
        return d
    return change


def drop(key):
    def change(d):
        del d[key]
        return d
    return change


FIX = "correct it there (or re-export the checkpoint)"
RM_FIX = "correct it there (or re-export the RM)"
DAMAGES = {
    "config_a_list": (edit_json("config.json", lambda d: [1, 2]),
                      "config.json must be a JSON object, got [1, 2]; " + FIX),
    "config_not_json": (lambda f: (f / "config.json").write_text("{\"model_type\": "),
                        "config.json is not valid JSON (Expecting value: line 1 column 16 (char 15)); "
                        "restore the file the checkpoint was exported with"),
    "wrong_type": (edit_json("config.json", set_key("vision_config", "hidden_size", "32")),
                   'config.json: vision_config.hidden_size must be a positive integer, got "32"; ' + FIX),
    "zero_heads": (edit_json("config.json", set_key("text_config", "num_attention_heads", 0)),
                   "config.json: text_config.num_attention_heads must be a positive integer, got 0; " + FIX),
    "no_vision_config": (edit_json("config.json", drop("vision_config")),
                         "config.json: vision_config is missing (an InternVL config.json has vision_config and "
                         "text_config; rdance does not guess their shapes); restore the file the checkpoint "
                         "was exported with"),
    "vision_config_a_list": (edit_json("config.json", set_key(None, "vision_config", [])),
                             "config.json: vision_config must be a JSON object, got []; " + FIX),
    "settings_a_list": (edit_json("reward_config.json", lambda d: ["pairwise"]),
                        'reward_config.json must be a JSON object, got ["pairwise"]; ' + RM_FIX),
    "settings_bad_value": (edit_json("reward_config.json", set_key(None, "paradigm", "pairwize")),
                           'reward_config.json: paradigm must be one of pairwise, pointwise, regressive, caption, '
                           'got "pairwize"; ' + RM_FIX),
    "settings_wrong_type": (edit_json("reward_config.json", set_key(None, "max_prompt_tokens", "120")),
                            'reward_config.json: max_prompt_tokens must be a positive integer, got "120"; ' + RM_FIX),
    "settings_unknown_key": (edit_json("reward_config.json", set_key(None, "max_prompt_token", 120)),
                             "reward_config.json: unknown setting(s) max_prompt_token; rename or remove it (the "
                             "settings are paradigm, answer_format, criteria, normalise, max_prompt_tokens, "
                             "max_answer_tokens, max_tiles, video_frames, video_sampling)"),
}


@pytest.fixture
def copy(tmp_path, rm_folder):
    folder = tmp_path / "rm"
    shutil.copytree(rm_folder, folder)
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config fails first
    return folder


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_rm_folder_names_the_file_and_key(copy, damage):
    damage_fn, message = DAMAGES[damage]
    damage_fn(copy)
    with pytest.raises(ConfigError) as raised:
        RewardModel.from_pretrained(str(copy))
    assert str(raised.value) == f"{copy}/{message}"


def test_a_bad_setting_passed_in_python_is_named():
    with pytest.raises(ConfigError, match=r"^RewardModel.from_pretrained: max_prompt_tokens must be a positive "
                                          r"integer, got 0; pass a valid value$"):
        RewardModel.from_pretrained("unused", max_prompt_tokens=0)


def test_score_shows_the_damage_in_one_line(copy, tmp_path, capsys):
    edit_json("config.json", set_key("vision_config", "num_attention_heads", 0))(copy)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "in.jsonl").write_text('{"prompt": "x", "images": ["a.png"], "label": 1}\n')
    with flagsaver.flagsaver():
        flags.FLAGS(["rdance.run.score", f"--rm={copy}", f"--input={tmp_path}/in.jsonl"])
        with pytest.raises(SystemExit) as stopped:
            score.main([])
    assert re.fullmatch(r"error: .*rm/config.json: vision_config.num_attention_heads must be a positive integer, "
                        r"got 0; correct it there \(or re-export the checkpoint\)", stopped.value.code)


def test_the_fine_tuning_fit_check_reads_the_rm_folder_as_checked(copy):
    """The fit check builds the RM from its folder's configs alone: a bad reward_config.json is the
    same ConfigError there, before any shape is built."""
    import ml_collections
    from rdance.train import finetune_setup
    edit_json("reward_config.json", set_key(None, "paradigm", "pairwize"))(copy)
    config = ml_collections.ConfigDict({"reward": {"path": str(copy), "dtype": "float32", "remat": "none"}})
    with pytest.raises(ConfigError, match=r"reward_config.json: paradigm must be one of .* got \"pairwize\""):
        finetune_setup.open_reward(config, mesh=None, rules=None, scratch=str(copy))
