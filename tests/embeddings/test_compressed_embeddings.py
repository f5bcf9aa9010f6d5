"""Compressed embedding formats (hashed, qr, tt, rowmap, hot), CompressedEmbedding, compress_embeddings_ and
save -> from_pretrained on a tiny BERT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse.embeddings import EmbeddingCompressionConfig, TableCompression, compress_embeddings_, size_for
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import QR, TT, Hashed, Hot, RowMap, from_tensors
from hf_sparse.nn.compressed_embedding import CompressedEmbedding
from hf_sparse.testing import tiny_bert_classifier


def _table(rows=300, cols=16, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


FORMATS = {
    "hashed": lambda w: Hashed.from_dense(w, buckets=40, num_hashes=3, seed=1),
    "qr-add": lambda w: QR.from_dense(w, collisions=7, op="add"),
    "qr-mult": lambda w: QR.from_dense(w, collisions=7, op="mult"),
    "qr-concat": lambda w: QR.from_dense(w, collisions=7, op="concat"),
    "tt": lambda w: TT.from_dense(w, rank=4),
    "rowmap": lambda w: RowMap.from_dense(w, keep=50, shared=3),
    "hot": lambda w: Hot.split(
        w, torch.tensor([3, 1, 250]), "rowmap", "qr", {"keep": 3, "shared": 0}, {"collisions": 7}
    ),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_formats_round_trip_and_lookup_matches_dense(name):
    w = _table()
    fmt = FORMATS[name](w)
    again = from_tensors(fmt.tensors(), fmt.params())
    dense = fmt.to_dense()
    assert dense.shape == w.shape and torch.equal(again.to_dense(), dense)
    ids = torch.tensor([0, 299, 7, 7, 3, 250])
    torch.testing.assert_close(again.lookup(ids), dense[ids])
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in fmt.tensors().values())
    json.dumps(fmt.params())  # JSON-ready


def test_tt_svd_is_exact_at_full_rank_and_qr_ids_never_share_both_rows():
    w = _table(64, 8)
    tt = TT.from_dense(w, rank=64, vocab_factors=[4, 4, 4], dim_factors=[2, 2, 2])
    torch.testing.assert_close(tt.to_dense(), w, rtol=1e-4, atol=1e-5)
    qr = QR(torch.randn(10, 2), torch.randn(7, 2), (70, 4), "concat")
    assert len({tuple(r.tolist()) for r in qr.to_dense()}) == 70
    # rowmap keeps the rows of the most important ids exactly; the others share a row (their mean).
    freq = torch.zeros(300)
    freq[[5, 9]] = 10.0
    rm = RowMap.from_dense(_table(), keep=2, shared=1, importance=freq)
    assert torch.equal(rm.to_dense()[[5, 9]], _table()[[5, 9]])
    others = torch.ones(300, dtype=torch.bool)
    others[[5, 9]] = False
    torch.testing.assert_close(rm.to_dense()[0], _table()[others].mean(0))


def test_malformed_tables_raise_format_errors():
    w = _table()
    bad = []
    h = Hashed.from_dense(w, buckets=8)
    bad.append(({"values": h.values}, {**h.params(), "hash_a": [0, 5]}))
    q = QR.from_dense(w, collisions=7)
    bad.append(({"quotient": q.quotient[:-1], "remainder": q.remainder}, q.params()))
    t = TT.from_dense(w, rank=3)
    bad.append(({**t.tensors(), "core_1": t.cores[1][:2]}, t.params()))
    r = RowMap.from_dense(w, keep=10)
    bad.append(({"remap": torch.full_like(r.remap, 99), "values": r.values}, r.params()))
    bad.append(({"remap": r.remap, "values": r.values * float("nan")}, r.params()))
    hot = Hot.split(w, torch.tensor([1, 2]), "rowmap", "qr", {"keep": 2, "shared": 0}, {"collisions": 7})
    bad.append(({**hot.tensors(), "hot_ids": torch.tensor([2, 1], dtype=torch.int32)}, hot.params()))
    bad.append((hot.tensors(), {**hot.params(), "cold": {"format": "nope"}}))
    for tensors, params in bad:
        with pytest.raises(FormatError):
            from_tensors(tensors, params)


def test_sizes_fit_the_budget():
    for method in ("hashed", "qr", "tt", "rowmap", "lowrank"):
        spec = TableCompression(method=method, compression=0.125)
        size = size_for(spec, 1683, 64)
        assert size, method
    assert size_for(TableCompression(method="qr", compression=0.125), 1683, 64)["collisions"] == 9
    with pytest.raises(ConfigError, match="budget"):
        size_for(TableCompression(method="qr", compression=0.001), 1683, 64)
    with pytest.raises(ConfigError, match="needs buckets or compression"):
        TableCompression(method="hashed")
    with pytest.raises(ConfigError, match="tables is empty"):
        EmbeddingCompressionConfig()


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "qr", "compression": 0.25, "op": "mult"},
        {"method": "hashed", "compression": 0.25},
        {"method": "tt", "compression": 0.25},
        {"method": "rowmap", "compression": 0.25},
        {"method": "qr", "compression": 0.25, "op": "add", "hot_rows": 8, "init": "random"},
        {"method": "lowrank", "compression": 0.25, "hot_rows": 4},
        {"method": "qrow", "bits": 4},
        {"method": "qrow", "bits": 2, "hot_rows": 6, "hot_bits": 4},
    ],
)
def test_compress_train_save_and_reload(tmp_path, spec):
    model = tiny_bert_classifier(seed=2)
    vocab = model.bert.embeddings.word_embeddings.weight.shape[0]
    freq = torch.arange(vocab, dtype=torch.float64).flip(0)  # low ids are frequent
    config = EmbeddingCompressionConfig(tables={"word_embeddings": TableCompression(**spec)})
    report = compress_embeddings_(model, config, frequencies=freq, progress=False)
    entry = report["bert.embeddings.word_embeddings"]
    assert entry["memory_ratio"] <= 0.25 + 1e-9
    table = model.bert.embeddings.word_embeddings
    assert isinstance(table, CompressedEmbedding)
    # Float tables train; quantised codes stay frozen (their scales live inside the rows' bytes).
    assert any(p.requires_grad for n, p in table.named_parameters()) == (spec["method"] != "qrow")
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert all(p.grad is not None for p in table.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded.bert.embeddings.word_embeddings, CompressedEmbedding)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before, rtol=0, atol=0)


def test_fit_lowers_the_error_and_frequent_rows_fit_better():
    from hf_sparse.embeddings import build_table

    w = _table(400, 16)
    freq = torch.ones(400, dtype=torch.float64)
    freq[:40] = 1000.0
    spec = TableCompression(method="qr", collisions=20, op="mult", fit_steps=0)
    _, closed = build_table(w, spec)
    _, fitted = build_table(w, spec.replace(fit_steps=300))
    assert fitted["relative_error"] < closed["relative_error"] - 0.03
    fmt, weighted = build_table(w, spec.replace(fit_steps=300), freq)  # frequent ids weigh 1000x
    err = (fmt.to_dense() - w).norm(dim=1)
    assert err[:40].mean() < err[40:].mean()


def test_tied_and_unknown_tables_are_refused():
    model = tiny_bert_classifier(seed=2)
    with pytest.raises(ConfigError, match="matches no nn.Embedding"):
        compress_embeddings_(
            model,
            EmbeddingCompressionConfig(tables={"nope": TableCompression(method="qr", collisions=4)}),
            progress=False,
        )
    assert math.isfinite(0.0)


def test_embedding_qat_trains_then_finalizes_to_integer_codes(tmp_path):
    from hf_sparse.embeddings import finalize_embeddings_
    from hf_sparse.nn.qat import QATEmbedding
    from hf_sparse.nn.quant import QuantEmbedding

    model = tiny_bert_classifier(seed=4)
    spec = TableCompression(method="qrow", bits=2, qat=True)
    report = compress_embeddings_(model, EmbeddingCompressionConfig(tables={"word_embeddings": spec}), progress=False)
    table = model.bert.embeddings.word_embeddings
    assert isinstance(table, QATEmbedding) and report["bert.embeddings.word_embeddings"]["qat"]
    ids = torch.randint(0, table.num_embeddings, (2, 7), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    assert table.base_layer.weight.grad is not None  # straight-through gradients reach the float table
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert finalize_embeddings_(model) == {"bert.embeddings.word_embeddings": "qdense"}
    assert isinstance(model.bert.embeddings.word_embeddings, QuantEmbedding)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="qat applies"):
        TableCompression(method="qr", collisions=3, qat=True)
