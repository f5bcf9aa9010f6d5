"""Low-rank formats, rank selection, factorize_ on a tiny BERT, training and save -> from_pretrained."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse import LowRankConfig, SparseLinear, factorize_
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import LowRank, LowRankSparse, from_tensors
from hf_sparse.lowrank import rank_for_compression, rank_for_energy
from hf_sparse.testing import tiny_bert_classifier


def _low_rank_matrix(rows, cols, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g) / rank**0.5


def test_truncated_svd_is_exact_at_the_true_rank_and_round_trips():
    w = _low_rank_matrix(40, 56, 6)
    q = LowRank.from_dense(w, rank=6)
    torch.testing.assert_close(q.to_dense(), w, rtol=1e-4, atol=1e-5)
    again = from_tensors(q.tensors(), q.params())
    assert torch.equal(again.to_dense(), q.to_dense()) and q.nbytes == 6 * (40 + 56) * 4
    noisy = w + 0.01 * torch.randn(40, 56)
    err4 = (LowRank.from_dense(noisy, rank=4).to_dense() - noisy).norm()
    err6 = (LowRank.from_dense(noisy, rank=6).to_dense() - noisy).norm()
    assert err6 < err4


def test_lowrank_sparse_keeps_the_largest_residual_entries():
    w = _low_rank_matrix(30, 30, 3)
    w[4, 7] += 10.0  # an outlier the low-rank part cannot hold
    q = LowRankSparse.from_dense(w, rank=3, density=0.01)
    plain = LowRank.from_dense(w, rank=3)
    residual = w - plain.to_dense()
    assert (q.to_dense() - w).norm() < 0.75 * residual.norm()
    assert q.sparse.values.numel() == 9  # 1% of 900
    largest = residual.abs().flatten().topk(9).values
    torch.testing.assert_close(q.sparse.values.abs().sort().values, largest.sort().values)
    again = from_tensors(q.tensors(), q.params())
    torch.testing.assert_close(again.to_dense(), q.to_dense())


def test_bad_factors_raise_typed_errors():
    q = LowRank.from_dense(torch.randn(8, 12), rank=3)
    t = q.tensors()
    with pytest.raises(FormatError, match="factors have shapes"):
        from_tensors({**t, "u": t["u"][:, :2]}, q.params())
    with pytest.raises(FormatError, match="non-finite"):
        from_tensors({**t, "v": torch.full_like(t["v"], float("nan"))}, q.params())
    with pytest.raises(FormatError, match="rank must be an integer"):
        from_tensors(t, {**q.params(), "rank": 99})
    with pytest.raises(FormatError, match="rank must be an integer"):
        LowRank.from_dense(torch.randn(8, 12), rank=0)


def test_rank_rules():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert rank_for_energy(s, 0.7) == 1 and rank_for_energy(s, 0.9) == 2 and rank_for_energy(s, 1.0) == 4
    assert rank_for_compression(384, 1536, 0.5) == 153  # 153 * 1920 <= 0.5 * 384 * 1536 < 154 * 1920
    with pytest.raises(ConfigError, match="one of rank, energy, compression"):
        LowRankConfig(rank=8, energy=0.9)
    with pytest.raises(ConfigError, match="give rank"):
        LowRankConfig()


def test_factorize_tiny_bert_trains_and_reloads(tmp_path):
    model = tiny_bert_classifier(seed=3)
    ids = torch.randint(6, 128, (3, 11), generator=torch.Generator().manual_seed(0))
    report = factorize_(model, LowRankConfig(rank=8, round_to=1, min_rank=1), progress=False)
    converted = [n for n, e in report.items() if "format" in e]
    assert converted and all(report[n]["rank"] == 8 for n in converted)
    assert all(isinstance(model.get_submodule(n), SparseLinear) for n in converted)
    kept = [n for n, e in report.items() if "kept_dense" in e]
    assert all(report[n]["stored"] >= report[n]["params"] for n in kept)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    script = (
        "import torch, hf_sparse\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r}).eval()\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        "with torch.no_grad(): print(repr(m(input_ids=ids).logits.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.equal(torch.tensor(eval(out.stdout.strip().splitlines()[-1])), logits)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    layer = loaded.get_submodule(converted[0])
    assert isinstance(layer, SparseLinear) and layer.format == "lowrank"
    loaded.train()
    loss = loaded(input_ids=ids, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    assert layer.weight_u.grad is not None and layer.weight_v.grad is not None


def test_energy_rule_chooses_small_ranks_for_low_rank_layers():
    model = tiny_bert_classifier(seed=4)
    name = "bert.encoder.layer.0.intermediate.dense"
    with torch.no_grad():
        model.get_submodule(name).weight.copy_(_low_rank_matrix(64, 32, 4, seed=1))
    report = factorize_(
        model, LowRankConfig(energy=0.999, round_to=1, min_rank=1, target_modules=(name,)), progress=False
    )
    assert report[name]["rank"] == 4 and report[name]["relative_error"] < 1e-3


def test_embedding_factorisation_round_trips(tmp_path):
    from hf_sparse.nn.lowrank_embedding import LowRankEmbedding

    model = tiny_bert_classifier(seed=5)
    ids = torch.randint(6, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    table = model.bert.embeddings.word_embeddings.weight.detach().clone()
    report = factorize_(model, LowRankConfig(embeddings=("word_embeddings",), embedding_rank=8), progress=False)
    entry = report["bert.embeddings.word_embeddings"]
    assert entry["rank"] == 8 and entry["stored"] == 8 * (table.shape[0] + table.shape[1])
    emb = model.bert.embeddings.word_embeddings
    assert isinstance(emb, LowRankEmbedding) and len(report) == 1  # no Linear rule: Linear layers untouched
    torch.testing.assert_close(emb(ids), emb.dense_weight()[ids])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.bert.embeddings.word_embeddings, LowRankEmbedding)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, logits)
    with pytest.raises(IndexError, match="token ids"):
        emb(torch.tensor([[10_000]]))
    with pytest.raises(ConfigError, match="embedding_rank or embedding_compression"):
        LowRankConfig(embeddings=("word_embeddings",))


def test_callback_lowers_ranks_on_schedule_then_factorises(tmp_path):
    from transformers import Trainer

    from hf_sparse import LowRankCallback
    from hf_sparse.testing import cpu_training_args, tiny_classification_dataset

    model = tiny_bert_classifier(seed=6)
    name = "bert.encoder.layer.0.intermediate.dense"  # 64 x 32: full rank 32
    cb = LowRankCallback(
        LowRankConfig(rank=4, round_to=1, min_rank=1),
        start_step=0,
        end_step=6,
        update_every=2,
        nuclear_weight=0.5,
        prox_every=1,
    )
    args = cpu_training_args(tmp_path, max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=tiny_classification_dataset(), callbacks=[cb])
    trainer.train()
    assert cb.targets[name] == 4 and cb.full[name] == 32
    ranks = [cb.rank_at(name, s) for s in range(0, 9)]
    assert ranks[0] == 32 and ranks[6] == 4 and ranks == sorted(ranks, reverse=True)
    layer = model.get_submodule(name)
    assert isinstance(layer, SparseLinear) and layer.format == "lowrank" and layer.format_params["rank"] == 4
    assert cb.report[name]["relative_error"] < 1e-4  # already rank 4 when factorised: nothing lost


def test_nuclear_prox_and_rank_projection():
    from hf_sparse.lowrank.proximal import project_rank_, singular_value_threshold_

    w = _low_rank_matrix(20, 16, 5) + 0.01 * torch.randn(20, 16)
    s = torch.linalg.svdvals(w)
    left = singular_value_threshold_(w, float(s[5]) + 1e-6)  # everything below the 5th value goes
    assert left == 5 and int((torch.linalg.svdvals(w) > 1e-5).sum()) == 5
    kept = project_rank_(w, 2)
    assert int((torch.linalg.svdvals(w) > 1e-5).sum()) == 2 and 0 < kept < 1


def test_rank_sensitivity_scan_restores_the_model_and_gives_sensitive_layers_more_rank():
    from hf_sparse.lowrank import allocate_ranks, rank_sensitivity_scan

    model = tiny_bert_classifier(seed=3)
    config = LowRankConfig(compression=0.3, round_to=1, min_rank=1)
    sensitive = "bert.encoder.layer.0.attention.self.query"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    def evaluate(m):  # a metric that loses 10x faster when the query layer of block 0 is approximated
        loss = 0.0
        for name, layer in m.named_modules():
            if name in original and name.startswith("bert.encoder"):
                err = float((layer.weight.detach() - original[name]).norm() / original[name].norm())
                loss += (10.0 if name == sensitive else 1.0) * err
        return 1.0 - loss

    scan = rank_sensitivity_scan(model, config, evaluate, removed=(0.5, 0.75, 0.9), progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # restored bit-exactly
    assert scan.baseline == 1.0 and len(scan.metrics) == 12 and scan.sparsities == (0.5, 0.75, 0.9)
    assert all(d > 0 for d in scan.drops(sensitive))
    ranks = allocate_ranks(scan, model, config)
    others = [r for n, r in ranks.items() if n.endswith("attention.self.key")]
    assert ranks[sensitive] > max(others)
    stored = sum(r * sum(model.get_submodule(n).weight.shape) for n, r in ranks.items())
    total = sum(model.get_submodule(n).weight.numel() for n in ranks)
    assert stored <= 0.3 * total + 1e-9 * total  # rounded down: never over the target
    assert stored >= 0.25 * total
    with pytest.raises(ConfigError, match="compression"):
        allocate_ranks(scan, model, LowRankConfig(rank=4))
    with pytest.raises(ConfigError, match="removed"):
        rank_sensitivity_scan(model, config, evaluate, removed=(0.7, 0.5))
    with pytest.raises(ConfigError, match="number"):
        rank_sensitivity_scan(model, config, lambda m: "high", removed=(0.5,))


def test_module_ranks_prefer_an_exact_name_over_a_pattern():
    cfg = LowRankConfig(module_ranks={r"a.b": 3, "a_b": 5})
    assert cfg.rank_rule_for("a_b") == 5 and cfg.rank_rule_for("a.b") == 3 and cfg.rank_rule_for("axb") == 3


def _train_lowrank(out, *, stop_at=None, resume=None):
    from transformers import Trainer, TrainerCallback

    from hf_sparse import LowRankCallback
    from hf_sparse.testing import cpu_training_args, tiny_classification_dataset

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == stop_at:
                control.should_training_stop = True

    model = tiny_bert_classifier(seed=6)
    # An energy rule: targets read off the weights at the start, which a resumed run sees already projected.
    cb = LowRankCallback(
        LowRankConfig(energy=0.6, round_to=1, min_rank=1), end_fraction=0.75, update_every=2, nuclear_weight=0.1
    )
    args = cpu_training_args(
        out,
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=6,
    )
    callbacks = [cb] + ([StopAt()] if stop_at else [])
    trainer = Trainer(model=model, args=args, train_dataset=tiny_classification_dataset(n=96), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model, cb


def test_lowrank_schedule_resumes_to_the_same_weights(tmp_path):
    import json

    from hf_sparse.errors import PruningStateError
    from hf_sparse.lowrank.callback import LOWRANK_STATE_FILE

    ref_model, ref_cb = _train_lowrank(tmp_path / "a")
    assert ref_cb.end_step == 9
    _train_lowrank(tmp_path / "b", stop_at=6)
    ckpt = tmp_path / "b" / "checkpoint-6"
    state = json.loads((ckpt / LOWRANK_STATE_FILE).read_text())
    assert state["targets"] == ref_cb.targets and state["end_step"] == 9
    model, cb = _train_lowrank(tmp_path / "b", resume=str(ckpt))
    assert cb.restored_from == str(ckpt / LOWRANK_STATE_FILE) and cb.targets == ref_cb.targets
    ref = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=0, atol=1e-6, msg=name)
    # Without the state file the energy rule reads the projected weights: different (smaller) targets.
    (ckpt / LOWRANK_STATE_FILE).unlink()
    _, lost = _train_lowrank(tmp_path / "b", resume=str(ckpt))
    assert lost.restored_from is None and lost.targets != ref_cb.targets
    # A corrupt or mismatched state file is a typed error naming the file.
    (ckpt / LOWRANK_STATE_FILE).write_text("{not json")
    with pytest.raises(PruningStateError, match=LOWRANK_STATE_FILE):
        _train_lowrank(tmp_path / "b", resume=str(ckpt))
    state["targets"] = {"nope": 1}
    (ckpt / LOWRANK_STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(PruningStateError, match="other layers"):
        _train_lowrank(tmp_path / "b", resume=str(ckpt))
