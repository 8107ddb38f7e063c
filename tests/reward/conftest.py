"""A tiny random reward model folder (HF InternVL layout + word tokenizer), made once."""
import jax
import ml_collections
import pytest
from flax import nnx

from experiments import rm_smoke
from rdance.models.internvl.config import load_config
from rdance.reward.folder import export
from rdance.reward.model import RewardNet
from rdance.world import vlm


def tiny_config(paradigm="pairwise"):
    c = rm_smoke.get_config()
    c.model.update(dict(patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                        text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1))
    c.rm.paradigm = paradigm
    return c


def make_rm_folder(path, paradigm="pairwise"):
    config = tiny_config(paradigm)
    base = vlm.write_model_folder(config.model, config.data.image_size, str(path / "base"))
    vlm_config = load_config(base)
    net = RewardNet(vlm_config, regression_head=paradigm == "regressive", rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    if paradigm == "regressive":  # a zero head would make every score equal
        params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
    return export(params, base, str(path / "export"), config)


@pytest.fixture(scope="session")
def rm_folder(tmp_path_factory):
    return make_rm_folder(tmp_path_factory.mktemp("rm"))
