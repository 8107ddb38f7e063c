"""Data sources open by spec through rdance.data.registry; an unknown spec names every known form."""
import pytest

import rdance.world  # noqa: F401  (registers the world's forms)
from experiments import rm_smoke
from rdance.data import registry
from rdance.world.pairs import PreferencePairs, WorldCaptions


def open_spec(spec, **kw):
    return registry.open_source(spec, rm_smoke.get_config().data, seed=0, size=2, noise=0.0, **kw)


def test_an_unknown_spec_lists_the_registered_forms(monkeypatch):
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    registry.register_source("toy", lambda args, data, **_: [args], "toy:WORD")
    with pytest.raises(ValueError) as error:
        open_spec("nowhere.parquet")
    message = str(error.value)
    assert message.startswith("data source 'nowhere.parquet': use ")
    for form in ["tfds:DATA_DIR:FORMAT[:SPLIT]", "'world'", "'world:KIND+KIND'", "'world_captions'", "toy:WORD",
                 "a .jsonl file"]:
        assert form in message
    assert open_spec("toy:hello") == ["hello"] and open_spec("toy") == [None]


def test_world_specs_open_the_worlds_sources():
    pairs = open_spec("world:relation+count")
    assert isinstance(pairs, PreferencePairs) and len(pairs) == 2
    assert isinstance(open_spec("world_captions"), WorldCaptions)
    with pytest.raises(ValueError, match=r"unknown prompt kinds \['colour'\]"):
        open_spec("world:relation+colour")
    with pytest.raises(ValueError, match="use tfds:DATA_DIR:FORMAT"):
        open_spec("tfds:only_a_folder")


def test_a_name_with_a_colon_is_refused():
    with pytest.raises(ValueError, match="without ':'"):
        registry.register_source("a:b", lambda *a, **k: [])
