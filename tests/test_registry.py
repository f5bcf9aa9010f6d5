import pytest

from hf_sparse import ConfigError, Registry
from hf_sparse.config import register_config
from hf_sparse.pruning.config import PruningConfig


def test_duplicate_names_are_rejected():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ConfigError, match="widget named 'a' is already registered"):
        reg.register("a", 2)
    assert reg.get("a") == 1 and "a" in reg and list(reg) == ["a"]


def test_unknown_name_lists_the_registered_ones():
    reg = Registry("widget")
    reg.register("b")(object)
    with pytest.raises(ConfigError, match=r"Unknown widget 'c'. Registered: \['b'\]"):
        reg.get("c")


def test_config_type_names_are_global():
    with pytest.raises(ConfigError, match="already registered"):
        register_config("pruning")(type("Other", (PruningConfig,), {}))
