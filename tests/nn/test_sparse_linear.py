"""SparseLinear and sparsify_ inside transformers models: equal outputs, compressed state dicts, sparse training."""

import pytest
import torch
from torch import nn

import hf_sparse
from hf_sparse import PruningConfig, SparseLinear, sparsify_
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import to_format
from hf_sparse.testing import tiny_bert_classifier


def _pruned_tiny(sparsity=0.8, seed=0):
    model = tiny_bert_classifier(seed=seed)
    hf_sparse.apply_(model, PruningConfig(sparsity=sparsity))
    return model


@pytest.mark.parametrize("fmt", ["csr", "hybrid", "csc", "coo", "bitmask"])
def test_sparsified_tiny_bert_matches_the_pruned_dense_model(fmt):
    model = _pruned_tiny()
    ids = torch.randint(0, 128, (3, 20))
    expected = model(ids).logits
    decisions = sparsify_(model, format=fmt, progress=False)
    assert all(d.converted for d in decisions.values()) and len(decisions) == 12
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 12
    assert isinstance(model.classifier, nn.Linear) and isinstance(model.bert.pooler.dense, nn.Linear)
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_state_dict_is_compressed_and_reloading_validates():
    model = _pruned_tiny()
    sparsify_(model, format="csr", progress=False)
    sd = model.state_dict()
    assert "bert.encoder.layer.0.attention.self.query.weight_values" in sd
    assert sd["bert.encoder.layer.0.attention.self.query.weight"].numel() == 0  # the placeholder, not a matrix
    assert sd["bert.encoder.layer.0.attention.self.query.weight_col_indices"].dtype == torch.int16
    model.load_state_dict(sd)
    bad = dict(sd)
    cols = bad["bert.encoder.layer.0.attention.self.query.weight_col_indices"].clone()
    cols[0] = 999
    bad["bert.encoder.layer.0.attention.self.query.weight_col_indices"] = cols
    with pytest.raises(FormatError, match="out of range"):
        model.load_state_dict(bad)


def test_sparse_training_keeps_pruned_positions_at_zero():
    model = _pruned_tiny()
    sparsify_(model, format="csr", progress=False)
    layer = model.bert.encoder.layer[0].intermediate.dense
    before = layer.dense_weight().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(3):
        loss = model(torch.randint(0, 128, (4, 12)), labels=torch.tensor([0, 1, 0, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = layer.dense_weight()
    assert not torch.equal(before, after)
    assert torch.equal(after[before == 0], torch.zeros_like(after[before == 0]))


def test_auto_choice_and_its_reasons():
    model = _pruned_tiny(sparsity=0.5)
    decisions = sparsify_(model, min_sparsity=0.6, progress=False)
    assert not any(d.converted for d in decisions.values())
    assert "below min_sparsity" in next(iter(decisions.values())).choice.reasons[0]
    decisions = sparsify_(model, batch_hint=16, progress=False)  # tiny 32x32 layers: dense is faster here
    for d in decisions.values():
        assert d.choice.reasons[-1].startswith(("kept dense", "chose")), d.choice.reasons


def test_sparsify_errors_name_the_problem():
    model = _pruned_tiny()
    with pytest.raises(ConfigError, match="selects no nn.Linear"):
        sparsify_(model, target_modules=["nothing_here"], progress=False)
    with pytest.raises(ConfigError, match="masks given for modules"):
        sparsify_(model, masks={"bert.nope": torch.ones(1, dtype=torch.bool)}, progress=False)
    with pytest.raises(ConfigError, match="need a named format"):
        sparsify_(model, block=(16, 16), progress=False)
    with pytest.raises(ValueError, match="Unknown sparse format"):
        sparsify_(model, format="ell", progress=False)
    with pytest.raises(FormatError, match=r"cannot store bert\.encoder\.layer\.0\.attention\.self\.query as nm"):
        sparsify_(model, format="nm", progress=False)


def test_sparse_linear_module_contract():
    linear = nn.Linear(16, 8)
    with torch.no_grad():
        linear.weight[torch.rand(8, 16) < 0.7] = 0
    layer = SparseLinear.from_linear(linear, "bsr", block=(4, 4))
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    assert "format=bsr" in repr(layer)
    with pytest.raises(FormatError, match="last dimension 16"):
        layer(torch.randn(2, 15))
    with pytest.raises(FormatError, match="needs a hf_sparse format"):
        SparseLinear(torch.ones(2, 2))
    with pytest.raises(FormatError, match=r"bias must have shape \(8,\)"):
        SparseLinear(to_format("csr", linear.weight.detach()), torch.ones(3))
    frozen = SparseLinear.from_linear(linear, trainable=False)
    assert not frozen.weight_values.requires_grad


@pytest.mark.real
def test_real_minilm_sparsified_matches_pruned_dense():
    from transformers import AutoModel, AutoTokenizer

    from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path

    path = minilm_l6_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    hf_sparse.apply_(model, PruningConfig(sparsity=0.85))
    text = load_rotten_tomatoes(seed=42)["test"][0]["text"]
    batch = tokenizer([text], padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        decisions = sparsify_(model, format="csr", progress=False)  # every layer: the equality is the point here
        got = model(**batch).last_hidden_state
    assert sum(d.converted for d in decisions.values()) == 36
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
