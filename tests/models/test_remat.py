"""rdance.models.remat: one vocabulary of remat names for every model; an unknown name fails
listing the valid ones (and translates the jax.checkpoint_policies names configs once used)."""
import jax.numpy as jnp
import pytest
from flax import nnx

from rdance.core.config_checks import ConfigValueError
from rdance.models import remat
from rdance.models.flux.stack import make_stack, run_stack
from rdance.models.layers import Linear

VALID = "choose one of none, full, dots, dots_no_batch"


def test_every_name_maps_to_a_policy():
    assert list(remat.POLICIES) == ["none", "full", "dots", "dots_no_batch"]
    assert remat.policy("none") is None
    assert all(callable(remat.policy(n)) for n in ("full", "dots", "dots_no_batch"))


@pytest.mark.parametrize("name, hint", [("fulll", ""), ("nothing_saveable", " ('nothing_saveable' is 'full' here)")])
def test_unknown_name_lists_the_valid_ones(name, hint):
    with pytest.raises(ConfigValueError) as error:
        remat.policy(name)
    assert str(error.value) == f"unknown remat '{name}'{hint}; {VALID}"


def test_the_flux_stack_refuses_an_unknown_name():
    blocks = make_stack(lambda r: Linear(2, 2, axes=(None, None), rngs=r), 2, nnx.Rngs(0))
    with pytest.raises(ConfigValueError, match=VALID):
        run_stack(blocks, jnp.ones((1, 2)), remat="everything")


def test_the_old_config_key_names_the_new_one():
    import ml_collections
    from rdance.core import config_checks
    assert config_checks.REMAT_NAMES == ", ".join(remat.POLICIES)
    config = ml_collections.ConfigDict({"reward": {"remat": "none"}})
    with pytest.raises(config_checks.ConfigKeyError, match=r"'reward.remat_policy' was renamed: pass "
                       r"--config.reward.remat=NAME instead \(NAME one of none, full, dots, dots_no_batch\)"):
        config_checks.check_override(config, "reward.remat_policy")
    config = ml_collections.ConfigDict({"rm": {"remat_policy": "nothing_saveable"}})
    with pytest.raises(ConfigValueError, match="config key rm.remat_policy was renamed to rm.remat"):
        config_checks.check_bounds(config)
