import pytest
import torch

import hf_sparse
from hf_sparse import ConfigError, Pruner, PruningConfig, PruningStateError, select_modules


def test_default_selection_is_the_encoder_linears(tiny_model):
    names = list(select_modules(tiny_model, PruningConfig()))
    assert len(names) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    assert all(n.startswith("bert.encoder.layer.") for n in names)
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in names)


def test_selection_by_name_and_regex_with_exclusion_winning(tiny_model):
    cfg = PruningConfig(target_modules=("query", r"bert\.encoder\.layer\.1\..*"), exclude_modules=("key",))
    names = list(select_modules(tiny_model, cfg))
    assert "bert.encoder.layer.0.attention.self.query" in names
    assert "bert.encoder.layer.1.intermediate.dense" in names
    assert not any(n.endswith(".key") for n in names)
    assert "bert.encoder.layer.0.intermediate.dense" not in names


def test_nothing_selected_is_an_error_that_lists_the_layers(tiny_model):
    with pytest.raises(ConfigError, match="selects no nn.Linear.*bert.encoder.layer.0"):
        select_modules(tiny_model, PruningConfig(target_modules=("nope",)))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_apply_reaches_the_target_and_reports_per_layer(tiny_model, scope):
    head = tiny_model.classifier.weight.clone()
    emb = tiny_model.bert.embeddings.word_embeddings.weight.clone()
    report = hf_sparse.apply_(tiny_model, PruningConfig(sparsity=0.6, scope=scope))
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert len(report["layers"]) == 12
    if scope == "layer":
        assert all(v["sparsity"] == pytest.approx(0.6, abs=2e-3) for v in report["layers"].values())
    assert torch.equal(tiny_model.classifier.weight, head)
    assert torch.equal(tiny_model.bert.embeddings.word_embeddings.weight, emb)
    assert report["nonzero_params"] < report["total_params"]


def test_apply_rejects_non_configs(tiny_model):
    with pytest.raises(ConfigError, match="needs an hf_sparse config"):
        hf_sparse.apply_(tiny_model, {"sparsity": 0.5})


def test_load_state_dict_checks_names_and_shapes(tiny_model):
    pruner = Pruner(tiny_model, PruningConfig())
    with pytest.raises(PruningStateError, match="does not prune"):
        pruner.load_state_dict({"bert.pooler.dense": torch.ones(32, 32, dtype=torch.bool)})
    name = next(iter(pruner.modules))
    with pytest.raises(PruningStateError, match="shape"):
        pruner.load_state_dict({name: torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(PruningStateError, match="dtype"):
        pruner.load_state_dict({name: torch.ones(32, 32)})
