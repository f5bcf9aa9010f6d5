"""Malformed sparse checkpoints: each corruption raises a typed ``HfSparseError`` that names the file, module or
tensor and the problem — never a loader error, a crash, or a silently wrong model.

Every case loads through ``AutoModelForSequenceClassification.from_pretrained(dir)``, which runs hf_sparse's checks
at three points (see ``hf_sparse/integrations/quantizer.py``): ``HfSparseConfig.post_init`` (config.json),
``HfSparseQuantizer._process_model_before_weight_loading`` (the safetensors headers against config.json and the
model, before transformers opens the files) and ``_process_model_after_weight_loading`` (every tensor was loaded,
none was dropped, every format validates, every value is finite). ``test_corruption_corpus`` drives >= 1,000 seeded
corruptions through the same ``from_pretrained`` call; ``test_checkpoint_fuzz.py`` grows the idea to every format,
sharded checkpoints and their index.
"""

from __future__ import annotations

import collections
import copy
import json
import random
import re
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification, BertForSequenceClassification
from transformers.utils import logging as hf_logging

import hf_sparse
from hf_sparse import PruningConfig, SparseLinear, sparsify_
from hf_sparse.errors import FormatError, HfSparseError
from hf_sparse.formats import BSR, COO, CSC, CSR, NM, Bitmask, Hybrid, to_format
from hf_sparse.integrations import sparse_config_for
from hf_sparse.nn import SparseEmbedding, replace_module
from hf_sparse.ops import explain, spmm_reference
from hf_sparse.testing import tiny_bert_classifier

IDS = torch.arange(40).reshape(4, 10) % 128
QUERY = "bert.encoder.layer.0.attention.self.query"
L0 = "bert.encoder.layer.0."
L1 = "bert.encoder.layer.1."
EMB = "bert.embeddings.word_embeddings"
#: The mixed checkpoint: every format, two BSR blocks and two N:M patterns, over the 12 Linears of the tiny BERT
#: (and its word embeddings as a SparseEmbedding).
PLAN = {
    L0 + "attention.self.query": ("csr", {}),
    L0 + "attention.self.key": ("csc", {}),
    L0 + "attention.self.value": ("coo", {}),
    L0 + "attention.output.dense": ("bsr", {"block": [8, 8]}),
    L0 + "intermediate.dense": ("hybrid", {}),
    L0 + "output.dense": ("nm", {"n": 2, "m": 4}),
    L1 + "attention.self.query": ("bitmask", {}),
    L1 + "attention.self.key": ("bsr", {"block": [16, 8]}),
    L1 + "attention.self.value": ("nm", {"n": 1, "m": 4}),
    L1 + "attention.output.dense": ("csr", {}),
    L1 + "intermediate.dense": ("csr", {}),
    L1 + "output.dense": ("hybrid", {}),
}


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    if bars:
        hf_logging.enable_progress_bar()
    hf_logging.set_verbosity(verbosity)


def _keep_mask(fmt: str, params: dict, weight: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    rows, cols = weight.shape
    if fmt == "bsr":
        r, c = params["block"]
        blocks = torch.rand(rows // r, cols // c, generator=g) < 0.5
        return blocks.repeat_interleave(r, 0).repeat_interleave(c, 1)
    if fmt == "nm":
        n, m = params["n"], params["m"]
        groups = weight.abs().reshape(rows, cols // m, m)
        top = groups.topk(n, dim=-1).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True).reshape(rows, cols)
    keep = torch.rand(rows, cols, generator=g) < 0.2
    if fmt == "hybrid":
        keep[::4] = True  # every fourth row dense: both parts of the hybrid are in use
    return keep


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{"csr": dir, "mixed": dir}``: a tiny BERT stored in CSR throughout, and one with every format."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = tiny_bert_classifier(seed=0)
    hf_sparse.apply_(model, PruningConfig(sparsity=0.85))
    sparsify_(model, format="csr", progress=False)
    model.save_pretrained(root / "csr")

    model = tiny_bert_classifier(seed=1)
    g = torch.Generator().manual_seed(1)
    for name, (fmt, params) in PLAN.items():
        linear = model.get_submodule(name)
        mask = _keep_mask(fmt, params, linear.weight.detach(), g)
        replace_module(model, name, SparseLinear.from_linear(linear, fmt, mask, **params))
    table = model.bert.embeddings.word_embeddings
    mask = torch.rand(table.weight.shape, generator=g) < 0.3
    replace_module(model, EMB, SparseEmbedding.from_embedding(table, mask))
    model.config.quantization_config = sparse_config_for(model)
    model.save_pretrained(root / "mixed")
    with torch.no_grad():
        torch.save(model(IDS).logits, root / "mixed_logits.pt")
    return {"csr": root / "csr", "mixed": root / "mixed", "mixed_logits": root / "mixed_logits.pt"}


def _copy(checkpoints, tmp_path, which="csr") -> Path:
    out = tmp_path / which
    shutil.copytree(checkpoints[which], out)
    return out


def _load(folder):
    return AutoModelForSequenceClassification.from_pretrained(folder)


def _edit_config(folder, fn):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    fn(config["quantization_config"])
    path.write_text(json.dumps(config))


def _edit_tensors(folder, fn):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _set(key, index, value):
    def fn(tensors):
        t = tensors[key].clone()
        t.view(-1)[index] = value
        tensors[key] = t

    return fn


def _raises(folder, *patterns, error=FormatError) -> str:
    """Load ``folder``; it must raise ``error`` whose message matches every regex in ``patterns``."""
    with pytest.raises(error) as info:
        _load(folder)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    return message


def _key(module, tensor):
    return re.escape(f"'{module}.weight_{tensor}'")


# -- the files ------------------------------------------------------------------------------------------------------
def _header_size(folder) -> int:
    return int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["length_field", "in_header", "end_of_header", "in_data", "last_byte"])
def test_truncated_safetensors_raise_naming_the_file(checkpoints, tmp_path, where):
    folder = _copy(checkpoints, tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = _header_size(folder)
    cut = {"length_field": 5, "in_header": 8 + n // 2, "end_of_header": 8 + n - 1, "in_data": 8 + n + 1000}
    path.write_bytes(data[: cut.get(where, len(data) - 1)])
    _raises(folder, r"checkpoint file 'model\.safetensors'|in checkpoint file 'model\.safetensors'", "truncated")


def test_garbage_header_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    n = _header_size(folder)
    data[9:13] = b"#!@%"
    path.write_bytes(bytes(data))
    _raises(folder, "'model.safetensors'", "not valid JSON")
    data[8 + n // 2 : 8 + n // 2 + 4] = b"\xff\xfe\xfd\xfc"
    path.write_bytes(bytes(data))
    _raises(folder, "'model.safetensors'", "not valid UTF-8")
    data[:8] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    _raises(folder, "'model.safetensors'", "100,000,000")


def test_corrupted_tensor_name_raises_instead_of_initialising_at_random(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    path = folder / "model.safetensors"
    key = b"bert.embeddings.LayerNorm.weight"
    path.write_bytes(path.read_bytes().replace(key, key.replace(b"s.L", b"s#L"), 1))
    _raises(folder, r"'bert\.embeddings#LayerNorm\.weight'", r"'bert\.embeddings\.LayerNorm\.weight' .* is missing")


def test_header_offsets_that_do_not_tile_the_data_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = _header_size(folder)
    header = json.loads(data[8 : 8 + n])
    key = QUERY + ".weight_values"
    begin, end = header[key]["data_offsets"]
    header[key]["data_offsets"] = [begin + 4, end + 4]  # overlaps the next tensor
    raw = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    _raises(folder, re.escape(repr(key)), "overlaps|gap")
    header[key]["dtype"] = "F16"
    header[key]["data_offsets"] = [begin, end]
    raw = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    _raises(folder, re.escape(repr(key)), r"shape \[\d+\] of F16 needs")


def test_missing_sparse_tensor_raises_instead_of_initialising_at_random(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, lambda t: t.pop(QUERY + ".weight_col_indices"))
    _raises(folder, _key(QUERY, "col_indices"), "missing from model.safetensors")


def test_missing_sparse_bias_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, lambda t: t.pop(QUERY + ".bias"))
    _raises(folder, re.escape(f"'{QUERY}.bias'"), "missing")


def test_missing_tensor_in_a_state_dict_is_caught_after_loading(checkpoints, tmp_path):
    """No files to check up front (``state_dict=``): the tensor that never arrived is caught after loading."""
    folder = _copy(checkpoints, tmp_path)
    state = load_file(folder / "model.safetensors")
    config = AutoConfig.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(None, config=config, state_dict=dict(state))
    _check_loaded_model(model)  # the complete state dict loads
    del state[QUERY + ".weight_values"]
    with pytest.raises(FormatError, match=rf"{_key(QUERY, 'values')} was not loaded from the checkpoint"):
        BertForSequenceClassification.from_pretrained(None, config=config, state_dict=state)


def test_extra_tensor_of_a_sparse_module_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, lambda t: t.update({QUERY + ".weight_row_indices": torch.zeros(3, dtype=torch.int16)}))
    _raises(folder, _key(QUERY, "row_indices"), "not a tensor of sparse module")


def test_sparse_tensors_of_an_undescribed_module_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, lambda q: q["modules"].pop(QUERY))
    _raises(
        folder, re.escape(f"'{QUERY}.weight_") + r"(col_indices|crow_indices|values)'", "does not describe that module"
    )


# -- indices and pointers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [32, 500, -1])
def test_col_index_out_of_range_raises(checkpoints, tmp_path, value):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, _set(QUERY + ".weight_col_indices", 0, value))
    _raises(folder, _key(QUERY, "col_indices"), rf"col_indices\[0\]={value} is out of range \[0, 32\)")


def test_non_monotone_row_pointers_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    crow = load_file(folder / "model.safetensors")[QUERY + ".weight_crow_indices"]
    _edit_tensors(folder, _set(QUERY + ".weight_crow_indices", 5, int(crow[7]) + 1))
    _raises(folder, _key(QUERY, "crow_indices"), "not monotone")


def test_last_row_pointer_not_nnz_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    crow = load_file(folder / "model.safetensors")[QUERY + ".weight_crow_indices"]
    _edit_tensors(folder, _set(QUERY + ".weight_crow_indices", -1, int(crow[-1]) - 1))
    _raises(folder, _key(QUERY, "crow_indices"), rf"end at {int(crow[-1])}")


def test_unsorted_or_duplicate_columns_in_a_row_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    state = load_file(folder / "model.safetensors")
    crow, col = state[QUERY + ".weight_crow_indices"], state[QUERY + ".weight_col_indices"]
    row = next(i for i in range(32) if int(crow[i + 1]) - int(crow[i]) >= 2)
    _edit_tensors(folder, _set(QUERY + ".weight_col_indices", int(crow[row]) + 1, int(col[int(crow[row])])))
    _raises(folder, _key(QUERY, "col_indices"), "not sorted and unique")


# -- dtypes and shapes ----------------------------------------------------------------------------------------------
def _cast(key, dtype):
    def fn(tensors):
        tensors[key] = tensors[key].to(dtype)

    return fn


def test_index_dtype_in_file_disagreeing_with_config_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, _cast(QUERY + ".weight_col_indices", torch.int32))
    _raises(folder, _key(QUERY, "col_indices"), "stored as I32, but .*declares int16")


@pytest.mark.parametrize("dtype, code", [(torch.float64, "F64"), (torch.bfloat16, "BF16"), (torch.int32, "I32")])
def test_values_dtype_in_file_disagreeing_with_config_raises(checkpoints, tmp_path, dtype, code):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, _cast(QUERY + ".weight_values", dtype))
    _raises(folder, _key(QUERY, "values"), f"stored as {code}, but .*declares float32")


def test_wrong_index_dtype_declared_consistently_still_raises(checkpoints, tmp_path):
    """int32 column indices in the file *and* in config.json: the format itself requires int16 for 32 columns."""
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, _cast(QUERY + ".weight_col_indices", torch.int32))
    _edit_config(folder, lambda q: q["modules"][QUERY]["tensors"]["col_indices"].__setitem__(1, "int32"))
    _raises(folder, _key(QUERY, "col_indices"), "has dtype torch.int32; expected torch.int16")


def test_values_declared_as_integers_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, _cast(QUERY + ".weight_values", torch.int32))
    _edit_config(folder, lambda q: q["modules"][QUERY]["tensors"]["values"].__setitem__(1, "int32"))
    _raises(folder, re.escape(f"modules['{QUERY}'].tensors['values']"), "must be floating-point")


def test_dense_tensor_stored_as_integers_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    key = "bert.embeddings.word_embeddings.weight"
    _edit_tensors(folder, lambda t: t.update({key: t[key].view(torch.int32)}))
    _raises(folder, re.escape(repr(key)), "stored as I32, but the model's tensor is float32")


def test_tensor_shape_in_file_disagreeing_with_config_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    key = QUERY + ".weight_col_indices"
    n = int(load_file(folder / "model.safetensors")[key].numel())
    _edit_tensors(folder, lambda t: t.update({key: torch.cat([t[key], t[key][-1:]])}))
    _raises(folder, _key(QUERY, "col_indices"), rf"has shape \[{n + 1}\], but .*declares \[{n}\]")


def test_declared_shape_disagreeing_with_the_format_raises(checkpoints, tmp_path):
    """One extra row pointer, in the file and in config.json alike: the format's own check catches it."""
    folder = _copy(checkpoints, tmp_path)
    key = QUERY + ".weight_crow_indices"
    _edit_tensors(folder, lambda t: t.update({key: torch.cat([t[key], t[key][-1:]])}))
    _edit_config(folder, lambda q: q["modules"][QUERY]["tensors"]["crow_indices"].__setitem__(0, [34]))
    _raises(folder, _key(QUERY, "crow_indices"), "has length 34; expected 33")


def test_module_shape_in_config_disagreeing_with_the_model_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, lambda q: q["modules"][QUERY]["params"].update(shape=[16, 32]))
    _raises(
        folder, re.escape(repr(QUERY)), r"has shape \[16, 32\] in config.json, but the model's layer is \[32, 32\]"
    )


def test_placeholder_weight_of_the_wrong_shape_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_tensors(folder, lambda t: t.update({QUERY + ".weight": torch.zeros(4)}))
    _raises(folder, re.escape(f"'{QUERY}.weight'"), r"has shape \[4\]; sparse module .* needs \[0\]")


# -- config.json ----------------------------------------------------------------------------------------------------
def test_unknown_format_name_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, lambda q: q["modules"][QUERY]["params"].update(format="ell"))
    _raises(folder, re.escape(f"modules['{QUERY}']"), "unknown format 'ell'; known formats")


def test_other_known_format_name_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, lambda q: q["modules"][QUERY]["params"].update(format="coo"))
    _raises(folder, re.escape(f"modules['{QUERY}']"), "missing tensor or parameter 'row_indices'")


@pytest.mark.parametrize("version, advice", [(99, "Upgrade hf_sparse"), (0, "only one"), ("1", "only one")])
def test_unknown_schema_version_raises(checkpoints, tmp_path, version, advice):
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, lambda q: q.update(schema_version=version))
    _raises(folder, f"schema_version is {re.escape(repr(version))}", advice)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda q: q.update(modules=["x"]), "modules must be a dict"),
        (lambda q: q["modules"][QUERY]["params"].update(shape="32x32"), r"params\['shape'\] must be \[rows, cols\]"),
        (lambda q: q["modules"][QUERY]["params"].update(shape=[32.0, 32]), r"params\['shape'\] must be"),
        (lambda q: q["modules"][QUERY]["params"].update(format=["csr"]), "unknown format"),
        (lambda q: q["modules"][QUERY]["params"].update(block=[16, 16]), "has parameters"),
        (lambda q: q["modules"][QUERY]["tensors"].update(values=[[153], ["float32"]]), r"tensors\['values'\]"),
        (lambda q: q["modules"][QUERY]["tensors"].update(values=[[-1], "float32"]), r"tensors\['values'\]"),
        (lambda q: q["modules"][QUERY]["tensors"].update(values=[[True], "float32"]), r"tensors\['values'\]"),
        (lambda q: q["modules"][QUERY]["tensors"].pop("values"), r"missing tensor or parameter 'values'"),
        (lambda q: q["modules"][QUERY]["tensors"].update(extra=[[3], "int16"]), r"tensors\['extra'\] declares it"),
        (lambda q: q["modules"][QUERY].pop("params"), "must be a dict with 'params' and 'tensors'"),
        (lambda q: q["modules"][QUERY].update(version=2), "does not define"),
    ],
)
def test_wrong_types_and_keys_in_config_raise(checkpoints, tmp_path, edit, pattern):
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, edit)
    _raises(folder, re.escape(QUERY) + "|modules must", pattern)


def test_truncated_shard_of_a_sharded_checkpoint_raises_naming_the_shard(checkpoints, tmp_path):
    _load(checkpoints["csr"]).save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    folder = tmp_path / "sharded"
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2
    _check_loaded_model(_load(folder))
    shards[-1].write_bytes(shards[-1].read_bytes()[:-3])
    _raises(folder, re.escape(repr(shards[-1].name)), "truncated")


def test_config_without_dtype_and_truncated_file_raises_before_transformers_opens_it(checkpoints, tmp_path):
    """When config.json has no top-level ``dtype``, transformers opens the first file (to guess the dtype) before
    the quantizer sees the files; the quantizer's earliest hook (``update_attn_implementation``) checks a local
    folder's files first, so the truncated file is a FormatError naming it, not safetensors' own error."""
    folder = _copy(checkpoints, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["dtype"]
    (folder / "config.json").write_text(json.dumps(config))
    _check_loaded_model(_load(folder))
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-3])
    _raises(folder, r"checkpoint file 'model\.safetensors'", "truncated")


def test_removed_quant_method_is_transformers_error_not_a_silent_load(checkpoints, tmp_path):
    """Without ``quant_method`` transformers never hands the checkpoint to hf_sparse, so the error is its own
    ``ValueError`` (not typed by hf_sparse) — but it is loud, never a silently wrong model."""
    folder = _copy(checkpoints, tmp_path)
    _edit_config(folder, lambda q: q.pop("quant_method"))
    with pytest.raises(ValueError, match="quant_method"):
        _load(folder)


# -- format-specific corruptions (the mixed checkpoint) ------------------------------------------------------------
BSR8 = L0 + "attention.output.dense"
NM24 = L0 + "output.dense"
HYB = L0 + "intermediate.dense"


def test_mixed_checkpoint_round_trips(checkpoints):
    model = _load(checkpoints["mixed"])
    formats = {name: module.format for name, module in model.named_modules() if hasattr(module, "weight_format")}
    assert formats == {**{name: fmt for name, (fmt, _) in PLAN.items()}, EMB: "csr"}
    assert isinstance(model.get_submodule(EMB), SparseEmbedding)
    _check_loaded_model(model)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, torch.load(checkpoints["mixed_logits"]), rtol=1e-5, atol=1e-5)


def test_bsr_block_column_out_of_range_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    _edit_tensors(folder, _set(BSR8 + ".weight_col_indices", 0, 4))
    _raises(folder, _key(BSR8, "col_indices"), r"col_indices\[0\]=4 is out of range \[0, 4\)")


def test_bsr_block_that_disagrees_with_the_values_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    _edit_config(folder, lambda q: q["modules"][BSR8]["params"].update(block=[16, 16]))
    _raises(folder, _key(BSR8, "values"), r"values blocks have shape \(8, 8\); expected \(16, 16\)")


@pytest.mark.parametrize("value, pattern", [(4, r"must be in \[0, 4\)"), (-1, r"must be in \[0, 4\)")])
def test_nm_index_outside_the_group_raises(checkpoints, tmp_path, value, pattern):
    folder = _copy(checkpoints, tmp_path, "mixed")
    _edit_tensors(folder, _set(NM24 + ".weight_indices", 1, value))
    _raises(folder, _key(NM24, "indices"), pattern)


def test_nm_indices_not_sorted_in_a_group_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    idx = load_file(folder / "model.safetensors")[NM24 + ".weight_indices"]
    _edit_tensors(folder, _set(NM24 + ".weight_indices", 1, int(idx[0, 0])))
    _raises(folder, _key(NM24, "indices"), "sorted and unique within each group")


def test_nm_m_that_disagrees_with_the_tensors_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    _edit_config(folder, lambda q: q["modules"][NM24]["params"].update(n=1))
    _raises(folder, _key(NM24, "values"), r"values has 32 columns; expected 16")


def test_hybrid_dense_row_out_of_range_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    _edit_tensors(folder, _set(HYB + ".weight_dense_rows", 0, 64))
    _raises(folder, _key(HYB, "dense_rows"), r"dense_rows\[0\]=64 is out of range \[0, 64\)")


def test_hybrid_row_listed_twice_raises(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    state = load_file(folder / "model.safetensors")
    _edit_tensors(folder, _set(HYB + ".weight_dense_rows", 0, int(state[HYB + ".weight_sparse_rows"][0])))
    _raises(folder, _key(HYB, "dense_rows"), "must list every one of the 64 rows once")


def test_sparse_embedding_corruptions_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    _edit_tensors(folder, _set(EMB + ".weight_col_indices", 3, 32))
    _raises(folder, _key(EMB, "col_indices"), r"col_indices\[3\]=32 is out of range \[0, 32\)")
    folder = _copy(checkpoints, tmp_path / "2", "mixed")
    _edit_config(folder, lambda q: q["modules"][EMB]["params"].update(format="coo"))
    _raises(folder, re.escape(repr(EMB)), r"stored as one of \[.csr., .qdense., .lowrank., .hashed.")


def test_bitmask_padding_and_count_corruptions_raise(checkpoints, tmp_path):
    folder = _copy(checkpoints, tmp_path, "mixed")
    name = L1 + "attention.self.query"
    bits = load_file(folder / "model.safetensors")[name + ".weight_bitmask"]
    _edit_tensors(folder, _set(name + ".weight_bitmask", 0, int(bits[0, 0]) ^ 0xFF))
    _raises(folder, _key(name, "bitmask"), "bits are set but there are")


# -- the generated corpus -------------------------------------------------------------------------------------------
_PACK = {"I8": "b", "U8": "B", "I16": "h", "I32": "i", "F32": "f", "BOOL": "?"}
_LIMITS = {"I8": (-(2**7), 2**7 - 1), "U8": (0, 255), "I16": (-(2**15), 2**15 - 1), "I32": (-(2**31), 2**31 - 1)}
_VALUE_TENSORS = ("values", "dense_values")
_ODD_VALUES = [None, True, False, 0, -1, 1.5, 2**70, "", "x", "float32", [], {}, [1, 2], [[1], "int16"], {"a": 1}]


class _Layout:
    """Where each tensor of a safetensors file lies (the test's own reading of the format)."""

    def __init__(self, data: bytes):
        n = int.from_bytes(data[:8], "little")
        self.data_start = 8 + n
        header = json.loads(data[8 : 8 + n])
        self.entries = {k: v for k, v in header.items() if k != "__metadata__"}

    def count(self, key: str) -> int:
        return (self.entries[key]["data_offsets"][1] - self.entries[key]["data_offsets"][0]) // struct.calcsize(
            "<" + _PACK[self.entries[key]["dtype"]]
        )

    def _at(self, key: str, index: int) -> tuple[int, str]:
        fmt = "<" + _PACK[self.entries[key]["dtype"]]
        return self.data_start + self.entries[key]["data_offsets"][0] + index * struct.calcsize(fmt), fmt

    def get(self, data, key: str, index: int):
        pos, fmt = self._at(key, index)
        return struct.unpack_from(fmt, data, pos)[0]

    def put(self, data: bytearray, key: str, index: int, value) -> None:
        pos, fmt = self._at(key, index)
        struct.pack_into(fmt, data, pos, value)


def _paths(x, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value."""
    out = []
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


def _parent(root, path):
    for key in path[:-1]:
        root = root[key]
    return root


def _mutate_index(rng, layout, data, keys):
    key = rng.choice(keys)
    dtype, count = layout.entries[key]["dtype"], layout.count(key)
    lo, hi = _LIMITS[dtype]
    i = rng.randrange(count)
    old = layout.get(data, key, i)
    kind = rng.choice(["big", "negative", "extreme", "step", "swap", "duplicate", "random"])
    if kind in ("swap", "duplicate") and count >= 2:
        j = i + 1 if i + 1 < count else i - 1
        other = layout.get(data, key, j)
        layout.put(data, key, i, other)
        if kind == "swap":
            layout.put(data, key, j, old)
    else:
        new = {
            "big": old + rng.randint(1, 1000),
            "negative": -rng.randint(1, 1000),
            "extreme": rng.choice([lo, hi, 0]),
            "step": old + rng.choice([-2, -1, 1, 2]),
        }.get(kind, rng.randint(0, max(1, 2 * max(old, 8))))
        layout.put(data, key, i, min(max(new, lo), hi))
    return f"{kind} {key}[{i}]"


def _mutate_config(rng, qc, names):
    kind = rng.choice(["dtype", "shape", "params", "delete", "type"])
    name = rng.choice(names)
    spec = qc["modules"][name]
    if kind == "dtype":
        tname = rng.choice(sorted(spec["tensors"]))
        spec["tensors"][tname][1] = rng.choice(
            ["float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "uint8", "bool", "int64", "F32"]
        )
        return f"dtype {name}.{tname} -> {spec['tensors'][tname][1]}"
    if kind == "shape":
        tname = rng.choice(sorted(spec["tensors"]))
        shape = spec["tensors"][tname][0]
        how = rng.choice(["inc", "dec", "zero", "append", "drop", "negative"])
        if how == "append" or not shape:
            shape.append(rng.randint(1, 4))
        elif how == "drop":
            shape.pop()
        else:
            i = rng.randrange(len(shape))
            shape[i] = {"inc": shape[i] + 1, "dec": shape[i] - 1, "zero": 0, "negative": -shape[i]}[how]
        return f"shape {name}.{tname} {how}"
    if kind == "params":
        params = spec["params"]
        key = rng.choice(sorted(params) + ["block", "n", "m"])
        params[key] = {
            "format": rng.choice(["csr", "csc", "coo", "bsr", "nm", "hybrid", "bitmask", "ell", "CSR"]),
            "shape": [rng.choice([16, 32, 64]), rng.choice([16, 32, 64])],
            "block": [rng.choice([1, 2, 8, 16, 32]), rng.choice([1, 2, 8, 16, 32])],
        }.get(key, rng.randint(0, 8))
        return f"params {name}.{key} -> {params[key]!r}"
    paths = [p for p in _paths(qc) if p != ("quant_method",)]  # without quant_method hf_sparse never runs
    path = rng.choice(paths)
    parent = _parent(qc, path)
    if kind == "delete":
        del parent[path[-1]]
        return f"delete {path}"
    parent[path[-1]] = copy.deepcopy(rng.choice(_ODD_VALUES))
    return f"type {path} -> {parent[path[-1]]!r}"


def _corpus(rng, data: bytes, config: dict, count: int):
    """``count`` seeded corruptions of (safetensors bytes, config.json dict), as (kind, description, bytes,
    config) tuples; every one differs from the original. Kinds:

    - ``header_byte``: 1-3 random bytes of the length field or JSON header replaced by random bytes;
    - ``header_text``: 1-2 header bytes replaced by JSON-like characters (digits, quotes, brackets, dtype letters),
      which more often still parse: renamed tensors, changed shapes, offsets and dtypes;
    - ``truncate``: the file cut at a random offset (half of the cuts inside the header);
    - ``index``: one entry of an index or pointer tensor (any format) pushed out of range, made negative or
      extreme, stepped, swapped with its neighbour (breaks monotonicity / order) or duplicated (repeated column);
    - ``value_byte``: one bit of a stored value flipped — a different model, never a malformed one;
    - ``config``: in config.json's quantization_config, a declared dtype or shape edited, a format parameter
      edited (format name, shape, block, n, m), a random key deleted, or a random value replaced by one of another
      type (everything but ``quant_method``, without which transformers never calls hf_sparse).
    """
    layout = _Layout(data)
    index_keys = [k for k in layout.entries if ".weight_" in k and not k.endswith(_VALUE_TENSORS)]
    index_keys = [k for k in index_keys if layout.count(k) > 0]
    value_keys = [k for k in layout.entries if k.endswith(_VALUE_TENSORS) and layout.count(k) > 0]
    names = sorted(config["quantization_config"]["modules"])
    weights = {"header_byte": 12, "header_text": 10, "truncate": 13, "index": 30, "value_byte": 5, "config": 30}
    produced = 0
    while produced < count:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        new_data, new_config = bytearray(data), config
        if kind == "header_byte":
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                pos = rng.randrange(layout.data_start)
                new_data[pos] = (new_data[pos] + rng.randint(1, 255)) % 256
            what = f"header byte(s) near {pos}"
        elif kind == "header_text":  # JSON-like characters: more header edits that still parse
            for _ in range(rng.choice([1, 1, 2])):
                pos = rng.randrange(8, layout.data_start)
                new_data[pos] = rng.choice(b'0123456789"[]{},:-. FIUBL_')
            what = f"header text near {pos}"
        elif kind == "truncate":
            cut = rng.choice([rng.randrange(layout.data_start), rng.randrange(len(data))])
            new_data = new_data[:cut]
            what = f"cut at {cut} of {len(data)}"
        elif kind == "index":
            what = _mutate_index(rng, layout, new_data, index_keys)
        elif kind == "value_byte":
            key = rng.choice(value_keys)
            begin, end = layout.entries[key]["data_offsets"]
            pos = layout.data_start + rng.randrange(begin, end)
            new_data[pos] ^= 1 << rng.randrange(8)
            what = f"value bit in {key}"
        else:
            new_config = copy.deepcopy(config)
            what = _mutate_config(rng, new_config["quantization_config"], names)
        if bytes(new_data) == data and new_config == config:
            continue  # e.g. a swap of two equal entries: not a corruption
        produced += 1
        yield kind, what, bytes(new_data), new_config


def _stored_mask(fmt) -> tuple[torch.Tensor, int]:
    """Positions a loaded format stores, computed here independently of hf_sparse's validators, and how many
    entries it stores (a mask with fewer positions than entries has duplicates)."""
    rows, cols = fmt.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    if isinstance(fmt, (CSR, CSC)):
        ptr, idx = (fmt.crow_indices, fmt.col_indices) if isinstance(fmt, CSR) else (fmt.ccol_indices, fmt.row_indices)
        seg = torch.repeat_interleave(torch.arange(ptr.numel() - 1), torch.diff(ptr.long()))
        r, c = (seg, idx.long()) if isinstance(fmt, CSR) else (idx.long(), seg)
        mask[r, c] = True
        return mask, idx.numel()
    if isinstance(fmt, COO):
        mask[fmt.row_indices.long(), fmt.col_indices.long()] = True
        return mask, fmt.values.numel()
    if isinstance(fmt, BSR):
        r, c = fmt.block
        brow = torch.repeat_interleave(torch.arange(rows // r), torch.diff(fmt.crow_indices.long()))
        blocks = torch.zeros(rows // r, cols // c, dtype=torch.bool)
        blocks[brow, fmt.col_indices.long()] = True
        return blocks.repeat_interleave(r, 0).repeat_interleave(c, 1), fmt.values.numel() // (r * c) * r * c
    if isinstance(fmt, NM):
        width = fmt.values.shape[1]
        base = (torch.arange(width) // fmt.n) * fmt.m
        mask[torch.arange(rows).repeat_interleave(width), (base + fmt.indices.long()).reshape(-1)] = True
        return mask, fmt.values.numel()
    if isinstance(fmt, Bitmask):
        bits = (fmt.bitmask.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
        return bits.reshape(rows, -1)[:, :cols].bool(), fmt.values.numel()
    assert isinstance(fmt, Hybrid)
    listed = torch.cat([fmt.dense_rows.long(), fmt.sparse_rows.long()])
    assert sorted(listed.tolist()) == list(range(rows)), "hybrid rows are not a permutation"
    mask[fmt.dense_rows.long()] = True
    if fmt.sparse_rows.numel():
        part, count = _stored_mask(fmt.sparse)
        mask[fmt.sparse_rows.long()] = part
        return mask, fmt.dense_values.numel() + count
    return mask, fmt.dense_values.numel()


def _check_loaded_model(model) -> None:
    """The oracle for a checkpoint that loaded: each sparse layer's structure is valid by an independent check, its
    forward (the C++ kernels where they apply) equals the PyTorch reference and the dense reconstruction computed
    from the loaded tensors, and the whole model runs."""
    g = torch.Generator().manual_seed(0)
    for name, module in model.named_modules():
        if not isinstance(module, (SparseLinear, SparseEmbedding)):
            continue
        fmt = module.weight_format()
        mask, stored = _stored_mask(fmt)
        assert int(mask.sum()) == stored, f"{name}: duplicate stored positions slipped through"
        if not isinstance(fmt, (NM, Hybrid)):  # canonical layouts: rebuilding from dense gives the same tensors
            params = {k: v for k, v in fmt.params().items() if k not in ("format", "shape")}
            rebuilt = to_format(fmt.name, fmt.to_dense(), mask, **params).tensors()
            for tname, tensor in fmt.tensors().items():
                assert torch.equal(rebuilt[tname], tensor) or tensor.is_floating_point(), f"{name}.{tname}"
        if isinstance(module, SparseEmbedding):
            ids = torch.randint(0, module.num_embeddings, (3, 7), generator=g)
            with torch.no_grad():
                expected = torch.nn.functional.embedding(ids, fmt.to_dense())
                torch.testing.assert_close(module(ids), expected, rtol=0, atol=0, equal_nan=True)
            continue
        x = torch.randn(3, module.in_features, generator=g)
        with torch.no_grad():
            got = module(x)
            dense = fmt.to_dense().double()
            ref = spmm_reference(fmt, x.t().contiguous()).t() + module.bias
            exact = x.double() @ dense.t() + module.bias.double()
            bound = 1e-4 * (x.double().abs() @ dense.abs().t() + module.bias.double().abs()) + 1e-5
        finite = torch.isfinite(bound)
        for what, y in (("kernel", got), ("reference", ref)):
            assert torch.all((y.double() - exact).abs()[finite] <= bound[finite]), f"{name}: {what} differs"
        if hf_sparse.ops.load_kernels() and fmt.name in ("csr", "csc", "bsr", "nm", "hybrid"):
            assert not explain(fmt, x.t().contiguous())["cpu"], f"{name}: the C++ kernel did not run"
    with torch.no_grad():
        assert model(IDS).logits.shape == (4, 2)


def _names_something(message: str) -> bool:
    """A typed error must say where: a quoted module/tensor/file name or a config.json location."""
    return bool(message.strip()) and bool(re.search(r"'[^']+'|config\.json|model\.safetensors", message))


CORPUS_SIZE = 1200


@pytest.fixture
def _one_thread(monkeypatch):
    """Sequential loading and one intra-op thread: ~3x faster for 1,200 tiny loads on a busy 2-core machine."""
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")  # transformers' own switch for its loader thread pool
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_corruption_corpus(checkpoints, tmp_path, _one_thread):
    """1,200 seeded corruptions of the mixed checkpoint, each loaded with ``from_pretrained`` (the full path, no
    shortcut): a typed error that names its subject, or a model that passes the independent oracle of
    ``_check_loaded_model``. Anything else — an untyped exception, a crash, a wrong result — is a failure."""
    hf_sparse.ops.load_kernels()
    data = (checkpoints["mixed"] / "model.safetensors").read_bytes()
    config = json.loads((checkpoints["mixed"] / "config.json").read_text())
    folder = tmp_path / "case"
    folder.mkdir()
    outcomes = collections.Counter()
    failures = []
    nonfinite: list[str] = []
    start = time.perf_counter()
    cases = list(_corpus(random.Random(1234), data, config, CORPUS_SIZE))
    for kind, what, case_data, case_config in cases:
        (folder / "model.safetensors").write_bytes(case_data)
        (folder / "config.json").write_text(json.dumps(case_config))
        try:
            model = _load(folder)
        except HfSparseError as exc:
            outcomes[kind, "typed error"] += 1
            if kind == "value_byte":
                nonfinite.append(str(exc))
            if not _names_something(str(exc)):
                failures.append(f"{kind} ({what}): vague message {str(exc)!r}")
            continue
        except Exception as exc:  # anything untyped is a bug to fix
            failures.append(f"{kind} ({what}): {type(exc).__name__}: {str(exc)[:300]}")
            continue
        outcomes[kind, "loaded"] += 1
        try:
            _check_loaded_model(model)
        except Exception as exc:
            failures.append(f"{kind} ({what}): loaded but wrong: {type(exc).__name__}: {str(exc)[:300]}")
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(cases)} corruptions in {elapsed:.1f} s: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    )
    assert len(cases) >= 1000
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])
    # every kind of corruption was exercised and the typed errors dominate
    assert {kind for kind, _ in outcomes} == {
        "header_byte",
        "header_text",
        "truncate",
        "index",
        "value_byte",
        "config",
    }
    assert outcomes["truncate", "loaded"] == 0
    # A flipped value bit is a different model, not a broken one — unless it makes the value NaN or infinite, which
    # loading refuses.
    assert outcomes["value_byte", "typed error"] <= sum("NaN or infinite" in f for f in nonfinite)
