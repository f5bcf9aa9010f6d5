"""SparseEmbedding: CSR word-embedding tables that look up, train and prune like nn.Embedding."""

import pytest
import torch
from torch import nn

import hf_sparse
from hf_sparse import ConfigError, FormatError, PruningConfig, sparsify_
from hf_sparse.nn import SparseEmbedding
from hf_sparse.testing import tiny_bert_classifier


def _pruned_table(rows=50, dim=24, keep=0.25, padding_idx=None, seed=0):
    torch.manual_seed(seed)
    emb = nn.Embedding(rows, dim, padding_idx=padding_idx)
    with torch.no_grad():
        emb.weight.mul_(torch.rand(rows, dim) < keep)
        emb.weight[3] = 0  # an empty row
    return emb


def test_lookup_equals_nn_embedding_for_any_id_shape():
    emb = _pruned_table()
    sparse = SparseEmbedding.from_embedding(emb)
    for ids in (
        torch.tensor([3, 3, 0, 49]),
        torch.randint(0, 50, (4, 7)),
        torch.randint(0, 50, (2, 3, 5)),
        torch.zeros(0, dtype=torch.long),
    ):
        torch.testing.assert_close(sparse(ids), emb(ids), rtol=0, atol=0)
    assert sparse.weight_values.numel() == int((emb.weight != 0).sum())
    torch.testing.assert_close(sparse.dense_weight(), emb.weight.detach())


def test_gradients_reach_stored_entries_only_and_not_the_padding_row():
    emb = _pruned_table(padding_idx=1)
    sparse = SparseEmbedding.from_embedding(emb)
    ids = torch.tensor([[1, 2, 5], [5, 7, 1]])
    weights = torch.randn(2, 3, 24)
    (sparse(ids) * weights).sum().backward()
    (emb(ids) * weights).sum().backward()
    keep = emb.weight.detach() != 0
    expected = emb.weight.grad[keep]  # nn.Embedding gives the padding row no gradient either
    torch.testing.assert_close(sparse.weight_values.grad, expected)
    crow = sparse.weight_crow_indices.long()
    assert torch.all(sparse.weight_values.grad[crow[1] : crow[2]] == 0)


def test_bad_ids_and_bad_modules_raise_clear_errors():
    sparse = SparseEmbedding.from_embedding(_pruned_table())
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 50\)"):
        sparse(torch.tensor([50]))
    with pytest.raises(IndexError, match="token ids"):
        sparse(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer token ids"):
        sparse(torch.tensor([1.0]))
    with pytest.raises(FormatError, match="max_norm"):
        SparseEmbedding.from_embedding(nn.Embedding(5, 4, max_norm=1.0))
    with pytest.raises(FormatError, match="needs an nn.Embedding"):
        SparseEmbedding.from_embedding(nn.Linear(4, 4))


def test_pruning_the_word_embeddings_with_the_linears_then_sparsify():
    model = tiny_bert_classifier(seed=0)
    config = PruningConfig(sparsity=0.8, embeddings=("word_embeddings",))
    report = hf_sparse.apply_(model, config)
    assert "bert.embeddings.word_embeddings" in report["layers"]
    assert report["sparsity"] == pytest.approx(0.8, abs=1e-4)
    ids = torch.randint(0, 128, (3, 11))
    expected = model(ids).logits
    decisions = sparsify_(model, format="csr", embeddings=config.embeddings, progress=False)
    assert decisions["bert.embeddings.word_embeddings"].converted
    assert isinstance(model.bert.embeddings.word_embeddings, SparseEmbedding)
    assert isinstance(model.bert.embeddings.position_embeddings, nn.Embedding)  # not named: left alone
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_embedding_names_that_match_nothing_or_are_tied_are_errors():
    model = tiny_bert_classifier(seed=0)
    with pytest.raises(ConfigError, match="'word_embedding' matches no nn.Embedding"):
        hf_sparse.apply_(model, PruningConfig(sparsity=0.5, embeddings=("word_embedding",)))
    from transformers import BertForMaskedLM

    from hf_sparse.testing import tiny_bert_config

    lm = BertForMaskedLM(tiny_bert_config(tie_word_embeddings=True))
    with pytest.raises(ConfigError, match="tied embeddings"):
        hf_sparse.apply_(lm, PruningConfig(sparsity=0.5, embeddings=("word_embeddings",)))
