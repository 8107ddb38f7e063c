"""Data sources open by spec through rdance.data.registry; an unknown spec names every known form."""
import numpy as np
import pytest

import rdance.world  # noqa: F401  (registers the world's forms)
from experiments import rm_smoke
from rdance.data import registry
from rdance.data.records import JsonlRecords, write_jsonl
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


def test_a_mixture_draws_its_parts_in_proportion_and_reproducibly(tmp_path):
    path = str(tmp_path / "samples.jsonl")
    write_jsonl([PreferencePairs(5, seed=3, size=32)[i] for i in range(5)], path)
    mixture = registry.open_source(f"world@3|{path}", rm_smoke.get_config().data, seed=0, size=400, noise=0.0)
    assert len(mixture) == 400
    parts = [mixture.locate(i) for i in range(400)]
    from_file = [inner for part, inner in parts if part == 1]
    assert 70 <= len(from_file) <= 130                    # a quarter, give or take the draw
    assert set(from_file) == set(range(5))                # a small file repeats whole
    file_records = JsonlRecords(path)
    i = next(i for i, (part, _) in enumerate(parts) if part == 1)
    assert mixture[i].prompt == file_records[parts[i][1]].prompt
    again = registry.open_source(f"world@3|{path}", rm_smoke.get_config().data, seed=0, size=400, noise=0.0)
    assert [again.locate(i) for i in range(400)] == parts
    np.testing.assert_array_equal(again[3].images[0], mixture[3].images[0])
    for bad in (f"world@0|{path}", f"world@x|{path}", f"|{path}"):
        with pytest.raises(ValueError, match="a mixture is SPEC@WEIGHT"):
            open_spec(bad)
