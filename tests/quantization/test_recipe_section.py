"""The recipe's quantization section: validation, and the packaged quantisation recipes."""

import pytest

from hf_sparse import load_recipe
from hf_sparse.errors import ConfigError


def test_quantization_section_validates(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sparsities: [0.0]\nquantization: {weight: {bits: 4, granularity: group, group_size: 64}}\n")
    recipe = load_recipe(path)
    assert recipe.quantization.to_config().weight.bits == 4
    path.write_text("sparsities: [0.0]\nquantization: {weight: {bits: 4}, calibration: 3}\n")
    with pytest.raises(ConfigError, match="quantization.calibration"):
        load_recipe(path)
    path.write_text("sparsities: [0.0]\n")
    with pytest.raises(ConfigError, match="structured, quantization, attention, lowrank or embeddings"):
        load_recipe(path)


@pytest.mark.parametrize("name", ["minilm-qat-int8", "minilm-qat-int4", "minilm-sparse-int8"])
def test_packaged_quantisation_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.quantization is not None


def test_post_training_config_drops_learned_step_sizes(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sparsities: [0.0]\nquantization: {weight: {bits: 4, lsq: true}}\n")
    section = load_recipe(path).quantization
    assert section.to_config().weight.lsq
    assert not section.to_config(post_training=True).weight.lsq
