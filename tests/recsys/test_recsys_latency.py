"""The recommender's latency case on a tiny random SASRec: next-item scores as a tensors-only module the dense
baselines can copy, quantise and export (or skip, with the reason), a compressed item table timed against them, and
the report's latency section naming the best dense configuration and the machine."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_sparse.benchmarking import MODEL_TOLERANCES
from hf_sparse.embeddings import EmbeddingCompressionConfig, TableCompression, compress_embeddings_
from hf_sparse.jobs.report import machine_label
from hf_sparse.jobs.training import dense_baselines, latency
from hf_sparse.recsys import sasrec_for_movielens
from hf_sparse.recsys.compress import NextItemScores, render_recsys_markdown


@pytest.fixture(autouse=True)
def one_thread():
    # Microsecond calls: two spinning torch threads on busy cores would make each a hundred times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(users: int = 6, length: int = 10) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 200, (users, length), generator=torch.Generator().manual_seed(0))
    ids[:2, :4] = 0  # left padding
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_next_item_scores_leave_the_padding_column_out():
    model = sasrec_for_movielens(seed=0, num_items=199, max_position_embeddings=10, hidden_size=16).eval()
    inputs = _inputs()
    with torch.no_grad():
        full = model(**inputs, logits_to_keep=1).logits[:, -1]
        scores = NextItemScores(model)(**inputs)
    assert scores.shape == (6, 199) and torch.equal(scores, full[:, 1:]) and torch.isfinite(scores).all()


def test_a_compressed_table_is_timed_against_every_dense_configuration_of_the_dense_model():
    dense = sasrec_for_movielens(seed=0, num_items=199, max_position_embeddings=10, hidden_size=16).eval()
    inputs = _inputs()
    baselines = dense_baselines(NextItemScores(dense), inputs)  # all of them, onnxruntime's export included
    assert "fp32" in baselines and set(baselines) | set(baselines.skipped) == set(MODEL_TOLERANCES)
    assert all(why for why in baselines.skipped.values())
    assert all(err <= MODEL_TOLERANCES[name] for name, err in baselines.errors.items())
    ours = copy.deepcopy(dense)
    table = TableCompression(method="qrow", bits=4)
    compress_embeddings_(ours, EmbeddingCompressionConfig(tables={"item_embeddings": table}), progress=False)
    lat = latency(NextItemScores(ours), None, inputs, 2, baselines=baselines)
    assert lat["batch"] == 6 and lat["seq"] == 10 and set(lat["dense_baselines_s"]) == set(baselines)
    assert lat["best_dense"] in baselines and lat["ratio_vs_best_dense"] > 0 and lat["ratio_vs_fp32"] > 0


def test_report_has_a_latency_section_against_the_best_dense_configuration():
    machine = {"cpu": "AMD EPYC", "uarch": "AMD Zen 4 (Genoa)", "cores": 2, "isa_flags": ["avx512_vnni"]}
    base = {"test_hr@10": 0.5, "test_ndcg@10": 0.3, "valid_hr@10": 0.5, "train_s": 1.0, "table_bytes": 4000}
    lat = {
        "users": 64,
        "items": 1682,
        "seq": 50,
        "threads": 2,
        "rounds": 5,
        "ours_s": 0.002,
        "dense_baselines_s": {"fp32": 0.003, "torch-dynamic-int8": 0.001},
        "best_dense": "torch-dynamic-int8",
        "best_dense_s": 0.001,
        "ratio_vs_best_dense": 0.5,
        "ratio_vs_fp32": 1.5,
        "skipped_baselines": {"onnxruntime-dynamic-int8": "quantisation or session failed: EyeLike"},
    }
    run = {**base, "name": "int4", "method": None, "memory_ratio": 0.2, "hr_vs_dense": 0.0, "latency": lat}
    report = {
        "recipe": "r.yaml",
        "data": {"dataset": "movielens-100k", "users": 60, "items": 1682},
        "runs": [{**base, "name": "dense"}, run],
        "machine": machine,
        "total_s": 3.0,
    }
    md = render_recsys_markdown(report)
    assert "## Latency" in md and "for 64 test users (histories of up to 50 items)" in md
    assert "| int4 | 2.00 | 1.50x | 0.50x (torch-dynamic-int8) |" in md
    assert f"Dense configurations of this machine ({machine_label(machine)})" in md
    assert "Not timed: `onnxruntime-dynamic-int8`: quantisation or session failed: EyeLike." in md
    assert f"Machine: {machine_label(machine)}" in md
    report["runs"][1].pop("latency")
    assert "## Latency" not in render_recsys_markdown(report)
