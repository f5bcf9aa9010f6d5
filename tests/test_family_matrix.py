"""The families × features matrix: every feature on a tiny random-config model of every mainstream family either
computes checked numbers or raises the typed refusal that names the family and the feature.

The expected outcome of each cell is :data:`hf_sparse.testing.families.SUPPORT` (the README shows the same table,
which :func:`test_readme_shows_the_matrix` keeps in step). A cell that should work and raises, a cell that should
refuse and runs, and a refusal that is not an :class:`~hf_sparse.nn.roles.UnsupportedFamilyError` all fail here.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer
from transformers.pytorch_utils import Conv1D

from hf_sparse import (
    DistillationConfig,
    Distiller,
    LowRankConfig,
    PruningCallback,
    PruningConfig,
    QuantizationConfig,
    SparseAttentionConfig,
    SparseLinear,
    apply_sparse_attention_,
    convert_,
    factorize_,
    prepare_qat_,
    sparsify_,
    student_from_teacher,
)
from hf_sparse.nn.roles import UnsupportedFamilyError, family_of, layer_lists, module_role
from hf_sparse.pruning import StructuredPruningConfig, prune_, structured_prune_
from hf_sparse.testing import cpu_training_args
from hf_sparse.testing.families import (
    FAMILIES,
    FEATURES,
    SUPPORT,
    check_reload_in_fresh_process,
    logits_of,
    reload_in_process,
    support_table_markdown,
    tiny_inputs,
    tiny_model,
)

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


# -- helpers -------------------------------------------------------------------------------------------------------


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """A projection's weight as ``(out, in)`` whatever the module stores (``Conv1D`` keeps ``(in, out)``)."""
    weight = module.weight.detach()
    return weight.t() if isinstance(module, Conv1D) else weight


def _projections(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def _untouched_roles(before: nn.Module, after: nn.Module) -> None:
    """Task heads and embeddings (module-role table) keep every weight."""
    params = dict(after.named_parameters())
    for name, value in before.named_parameters():
        module = name.rpartition(".")[0]
        if module_role(before, module) in ("task_head", "embedding") and name in params:
            torch.testing.assert_close(params[name].detach(), value.detach(), msg=f"{name} changed")


def _train_dataset(family: str, n: int = 8, seq_len: int = 8) -> Dataset:
    kind = FAMILIES[family].kind
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 128, (n, seq_len), generator=g)
    rows = {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    if kind == "encoder":
        rows["labels"] = torch.randint(0, 2, (n,), generator=g).tolist()
    elif kind in ("decoder", "recommender"):  # the next token / item at each position (the model shifts / not)
        rows["labels"] = ids.roll(-1, dims=1).tolist() if kind == "recommender" else ids.tolist()
    else:
        rows["labels"] = torch.randint(4, 128, (n, seq_len // 2), generator=g).tolist()
    return Dataset.from_dict(rows)


def _batch_with_labels(family: str) -> dict[str, torch.Tensor]:
    data = _train_dataset(family, n=2)
    return {k: torch.tensor(data[k]) for k in data.column_names}


def _greedy(model, inputs, use_cache: bool) -> torch.Tensor:
    kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return model.generate(
            **kwargs, max_new_tokens=4, do_sample=False, use_cache=use_cache, pad_token_id=0, eos_token_id=None
        )


def _generation_agrees(family: str, model, inputs) -> None:
    if FAMILIES[family].kind in ("decoder", "seq2seq"):
        torch.testing.assert_close(_greedy(model, inputs, True), _greedy(model, inputs, False), rtol=0, atol=0)


def _prune_magnitude(model, sparsity: float = 0.5, **kw) -> None:
    prune_(model, PruningConfig(sparsity=sparsity, scope="layer", **kw))


# -- the cells -----------------------------------------------------------------------------------------------------
def cell_pruning(family: str, tmp_path: Path) -> None:
    """One-shot pruning, every granularity (and the calibration criteria): zeros where pruned, in the right groups,
    heads and embeddings untouched, the model still runs."""
    inputs = tiny_inputs(family)
    cases = [
        dict(granularity="unstructured", criterion="magnitude"),
        dict(granularity="unstructured", criterion="wanda", schedule="oneshot"),
        dict(granularity="nm", n=2, m=4),
        dict(granularity="block", block=(4, 4)),
    ]
    for case in cases:
        original = tiny_model(family)
        model = copy.deepcopy(original)
        calibration = [inputs] if case.get("criterion") == "wanda" else None
        prune_(model, PruningConfig(sparsity=0.5, scope="layer", **case), calibration=calibration)
        pruned = 0
        for name, module in _projections(model).items():
            if module_role(model, name) in ("task_head", "embedding"):
                continue
            w = _weight_out_in(module)
            zeros = (w == 0).float().mean().item()
            if zeros < 0.4:
                continue
            pruned += 1
            assert zeros == pytest.approx(0.5, abs=0.05), (case, name, zeros)
            if case["granularity"] == "nm":
                groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
                assert int(groups.max()) <= 2, (case, name)
            if case["granularity"] == "block":
                tiles = (w.reshape(w.shape[0] // 4, 4, -1, 4) != 0).sum((1, 3))
                assert bool(((tiles == 0) | (tiles == 16)).all()), (case, name)
        assert pruned >= 2, f"{case}: only {pruned} projections pruned"
        _untouched_roles(original, model)
        assert torch.isfinite(logits_of(model, inputs)).all()


def cell_callback(family: str, tmp_path: Path) -> None:
    """PruningCallback in the stock Trainer: the schedule reaches its sparsity, pruned weights stay zero."""
    model = tiny_model(family).train()
    cb = PruningCallback(PruningConfig(sparsity=0.5, start_step=0, end_step=2, update_every=1, scope="layer"))
    args = cpu_training_args(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=_train_dataset(family), callbacks=[cb])
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert cb.pruner.sparsity() == pytest.approx(0.5, abs=0.02)
    for name, mask in cb.pruner.masks.items():
        weight = _weight_out_in(cb.pruner.modules[name])  # masks are (out, in), as for nn.Linear
        assert (weight[~mask] == 0).all(), name


def cell_structured(family: str, tmp_path: Path) -> None:
    """Heads and FFN neurons removed physically: fewer parameters, reload identical, cached generation agrees."""
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    before = sum(p.numel() for p in model.parameters())
    structured_prune_(model, StructuredPruningConfig(heads_fraction=0.5, neurons_fraction=0.25))
    assert sum(p.numel() for p in model.parameters()) < before
    logits = logits_of(model, inputs)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits_of(reload_in_process(model, tmp_path), inputs), logits, atol=ATOL, rtol=0)
    _generation_agrees(family, model, inputs)


def cell_student(family: str, tmp_path: Path) -> None:
    """A student keeping every other layer is shallower (every layer list of a seq2seq model), its kept layers hold
    the teacher's weights, and it reloads identically."""
    teacher = tiny_model(family, num_hidden_layers=4) if family not in ("t5", "bart", "distilbert", "gpt2") else None
    teacher = teacher if teacher is not None else tiny_model(family)
    depth = teacher.config.num_hidden_layers
    if FAMILIES[family].kind == "seq2seq":
        student, keep = student_from_teacher(teacher, keep_every=2), list(range(1, depth, 2))
    else:  # the first layer kept: ModernBERT's first layer is built unlike the others
        keep = list(range(0, depth, 2))
        student = student_from_teacher(teacher, keep_layers=keep)
    assert student.config.num_hidden_layers == len(keep)
    shared = family_of(teacher).shared_layers  # ALBERT: one layer module runs as every layer
    for (name, layers), (_, original) in zip(layer_lists(student), layer_lists(teacher)):
        assert len(layers) == (len(original) if shared else len(keep)), name
        kept = layers[-1].state_dict()  # (T5's first block hands its position bias on: a key the original lacks)
        for key, value in original[0 if shared else keep[-1]].state_dict().items():
            torch.testing.assert_close(kept[key], value, msg=f"{name}: {key}")
    inputs = tiny_inputs(family)
    logits = logits_of(student, inputs)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits_of(reload_in_process(student, tmp_path), inputs), logits, atol=ATOL, rtol=0)


def cell_sparsify(family: str, tmp_path: Path) -> None:
    """sparsify_ after pruning: same logits as the dense pruned model, sparse layers present, reload identical."""
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    _prune_magnitude(model, 0.6)
    dense = logits_of(model, inputs)
    sparsify_(model, format="csr", min_sparsity=0.3, progress=False)
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    torch.testing.assert_close(logits_of(model, inputs), dense, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(logits_of(reload_in_process(model, tmp_path), inputs), dense, atol=ATOL, rtol=1e-4)


def cell_attention(family: str, tmp_path: Path) -> None:
    """Windowed attention: a window covering the sequence equals dense (eager) attention; a short one changes the
    result; decoders generate the same tokens with and without the cache."""
    inputs = tiny_inputs(family)
    reference = tiny_model(family)
    reference.set_attn_implementation("eager")
    want = logits_of(reference, inputs)
    model = tiny_model(family)
    apply_sparse_attention_(model, SparseAttentionConfig(window=64))
    torch.testing.assert_close(logits_of(model, inputs), want, atol=ATOL, rtol=1e-4)
    short = tiny_model(family)
    apply_sparse_attention_(short, SparseAttentionConfig(window=1))
    assert not torch.allclose(logits_of(short, inputs), want, atol=1e-4)
    _generation_agrees(family, short, inputs)


def cell_qat(family: str, tmp_path: Path) -> None:
    """QAT prepare + convert: the converted model computes what the fake-quantised one did; reload identical."""
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    prepare_qat_(model, QuantizationConfig())
    fake = logits_of(model, inputs)
    convert_(model)
    real = logits_of(model, inputs)
    torch.testing.assert_close(real, fake, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(logits_of(reload_in_process(model, tmp_path), inputs), real, atol=ATOL, rtol=1e-4)


def cell_distillation(family: str, tmp_path: Path) -> None:
    """Logit distillation: zero KD loss for a student identical to its teacher, positive for another one, and the
    student's loss takes gradients."""
    teacher = tiny_model(family, dropout=False)  # an identical copy in training mode gives identical logits
    batch = _batch_with_labels(family)
    student = copy.deepcopy(teacher).train()
    d = Distiller(student, teacher, DistillationConfig(alpha=1.0)).attach()
    same = student(**batch).loss
    assert abs(float(same)) < 1e-6
    d.detach()
    other = tiny_model(family, seed=5).train()
    d = Distiller(other, teacher, DistillationConfig(alpha=1.0)).attach()
    loss = other(**batch).loss
    assert torch.isfinite(loss) and float(loss) > 1e-6
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in other.parameters())
    d.detach()


def cell_lowrank(family: str, tmp_path: Path) -> None:
    """Low-rank factorisation at full rank equals the model; reload identical."""
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    want = logits_of(model, inputs)
    factorize_(model, LowRankConfig(energy=1.0, min_rank=1, round_to=1), progress=False)
    got = logits_of(model, inputs)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(logits_of(reload_in_process(model, tmp_path), inputs), got, atol=ATOL, rtol=1e-4)


def cell_lora(family: str, tmp_path: Path) -> None:
    """peft LoRA on sparse layers: the pattern-keeping merge keeps every pruned weight zero and, restricted to
    the stored positions, equals the adapted model's weight."""
    from peft import LoraConfig, get_peft_model

    from hf_sparse.integrations.peft import merge_lora, register_sparse_lora, stored_mask

    model = tiny_model(family)
    inputs = tiny_inputs(family)
    _prune_magnitude(model, 0.6)
    sparsify_(model, format="csr", min_sparsity=0.3, progress=False)
    targets = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, SparseLinear)})
    masks = {n: stored_mask(m).clone() for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    peft_model = get_peft_model(model, register_sparse_lora(LoraConfig(r=4, lora_alpha=8, target_modules=targets)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    merged = merge_lora(peft_model, keep_pattern=True)
    assert torch.isfinite(logits_of(merged, inputs)).all()
    for name, mask in masks.items():
        layer = merged.get_submodule(name)
        assert isinstance(layer, SparseLinear), name
        torch.testing.assert_close(stored_mask(layer), mask)
        assert (layer.weight_format().to_dense()[~mask] == 0).all(), name


def cell_generate(family: str, tmp_path: Path) -> None:
    """generate() on a pruned, sparsified model: the same tokens as the dense pruned model, with and without cache."""
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    _prune_magnitude(model, 0.6)
    dense = _greedy(model, inputs, True)
    sparsify_(model, format="csr", min_sparsity=0.3, progress=False)
    torch.testing.assert_close(_greedy(model, inputs, True), dense, rtol=0, atol=0)
    torch.testing.assert_close(_greedy(model, inputs, False), dense, rtol=0, atol=0)


CELLS = {
    "pruning": cell_pruning,
    "callback": cell_callback,
    "structured": cell_structured,
    "student": cell_student,
    "sparsify": cell_sparsify,
    "attention": cell_attention,
    "qat": cell_qat,
    "distillation": cell_distillation,
    "lowrank": cell_lowrank,
    "lora": cell_lora,
    "generate": cell_generate,
}


def test_every_feature_has_a_cell():
    assert tuple(CELLS) == FEATURES


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cell(family, feature, tmp_path):
    expected = SUPPORT[family][feature]
    if expected == "n/a":
        pytest.skip(f"{feature} does not apply to {FAMILIES[family].kind} models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if expected == "yes":
            CELLS[feature](family, tmp_path)
            return
        with pytest.raises(UnsupportedFamilyError) as refused:
            CELLS[feature](family, tmp_path)
    entry = family_of(tiny_model(family))
    assert entry is not None and entry.family in str(refused.value)
    assert refused.value.feature, refused.value


def test_fresh_process_reload_of_every_family(tmp_path):
    """One fresh Python process reloads a sparsified checkpoint of every family that supports it, by the Auto class
    of its kind, and computes the saved logits."""
    cases = []
    for family in FAMILIES:
        if SUPPORT[family]["sparsify"] != "yes":
            continue
        model = tiny_model(family)
        _prune_magnitude(model, 0.6)
        sparsify_(model, format="csr", min_sparsity=0.3, progress=False)
        cases.append((family, model, tmp_path / family))
    check_reload_in_fresh_process(cases)


def test_readme_shows_the_matrix():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert support_table_markdown() in readme, "README's family × feature table is out of date: paste the output "
    "of hf_sparse.testing.families.support_table_markdown()"
