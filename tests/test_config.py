import dataclasses
import json

import pytest

from hf_sparse import CONFIGS, BaseConfig, ConfigError, PruningConfig
from hf_sparse.recipes import Recipe


def test_pruning_config_round_trip_dict_and_json():
    cfg = PruningConfig(sparsity=0.8, scope="layer", target_modules=("query", r".*\.value"), end_step=100)
    d = cfg.to_dict()
    assert d["config_type"] == "pruning" and d["version"] == PruningConfig.version
    assert d["target_modules"] == ["query", r".*\.value"]  # plain JSON types
    assert PruningConfig.from_dict(d) == cfg
    assert PruningConfig.from_json(cfg.to_json()) == cfg
    assert BaseConfig.from_dict(json.loads(cfg.to_json())) == cfg  # dispatch by config_type through the registry


def test_config_is_frozen_and_replace_validates():
    cfg = PruningConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sparsity = 0.9
    assert cfg.replace(sparsity=0.9).sparsity == 0.9
    with pytest.raises(ConfigError, match="sparsity"):
        cfg.replace(sparsity=1.5)
    with pytest.raises(ConfigError, match="'sparsty'"):
        cfg.replace(sparsty=0.9)


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        PruningConfig.from_dict({"sparsty": 0.5})
    assert "'sparsty'" in str(err.value) and "sparsity" in str(err.value) and "update_every" in str(err.value)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"sparsity": "0.5"}, "sparsity must be of type float"),
        ({"sparsity": True}, "sparsity must be of type float"),
        ({"update_every": 2.5}, "update_every must be of type int"),
        ({"scope": "blockwise"}, "scope must be one of ['global', 'layer']"),
        ({"target_modules": "query"}, "target_modules must be a list of str"),
        ({"target_modules": ["("]}, "invalid regular expression"),
        ({"sparsity": 1.0}, "sparsity must be in [0, 1)"),
        ({"initial_sparsity": 0.7, "sparsity": 0.5}, "initial_sparsity"),
        ({"start_step": 10, "end_step": 5}, "end_step"),
        ({"version": 99}, "Upgrade hf_sparse"),
        ({"config_type": "recipe"}, "expects 'pruning'"),
    ],
)
def test_bad_values_raise_value_errors_naming_the_field(data, fragment):
    with pytest.raises(ValueError) as err:
        PruningConfig.from_dict(data)
    assert fragment in str(err.value)


def test_direct_construction_is_type_checked_too():
    with pytest.raises(ConfigError, match="sparsity"):
        PruningConfig(sparsity="high")
    assert PruningConfig(sparsity=1 // 2).sparsity == 0.0  # ints are accepted for floats and stored as float
    assert isinstance(PruningConfig(target_modules=["a"]).target_modules, tuple)


def test_nested_errors_carry_the_dotted_path():
    with pytest.raises(ConfigError, match=r"Unknown key 'pruning\.sparsty'"):
        Recipe.from_dict({"pruning": {"sparsty": 0.5}})
    with pytest.raises(ConfigError, match=r"dense\.learning_rate must be of type float"):
        Recipe.from_dict({"dense": {"learning_rate": "fast"}})


def test_recipe_round_trip():
    recipe = Recipe.from_dict({"sparsities": [0.5, 0.8], "pruning": {"end_step": 7}})
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert [c.sparsity for c in recipe.pruning_runs()] == [0.5, 0.8]


def test_base_config_requires_a_type():
    with pytest.raises(ConfigError, match="config_type is missing"):
        BaseConfig.from_dict({"sparsity": 0.5})
    with pytest.raises(ConfigError, match="Unknown config type 'nope'"):
        BaseConfig.from_dict({"config_type": "nope"})
    assert "pruning" in CONFIGS and "recipe" in CONFIGS
