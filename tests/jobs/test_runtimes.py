"""hf_sparse.load_runtime: a model a job saved in a machine configuration comes back in that configuration, with
the same outputs as its float32 weights within the configuration's tolerance; malformed folders get typed errors."""

from __future__ import annotations

import json

import pytest
import torch
from test_user_tasks import _save_tiny_bert
from transformers import AutoTokenizer, BertForSequenceClassification, BertForTokenClassification

import hf_sparse
from hf_sparse.benchmarking import MODEL_TOLERANCES
from hf_sparse.runtimes import RUNTIME_FILE, OpenVINOModel, RuntimeLoadError, load_runtime


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _save_tiny_bert(tmp_path_factory.mktemp("runtime") / "bert", cls=BertForSequenceClassification)


def _pick(tmp_path, source, runtime, **extra):
    folder = tmp_path / f"student-{runtime}"
    folder.mkdir()
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = {"run": "student", "runtime": runtime, "task": "text-classification", **extra}
    (folder / RUNTIME_FILE).write_text(json.dumps(meta))
    return folder


def _inputs(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    return dict(tok(["the movie was great", "very bad film is the plot"], return_tensors="pt", padding=True))


@pytest.mark.parametrize("runtime", ["bf16", "torch-dynamic-int8", "openvino-int8-weights"])
def test_a_saved_pick_loads_in_its_configuration_and_matches_its_float32_weights(tmp_path, classifier, runtime):
    if runtime == "openvino-int8-weights":
        pytest.importorskip("openvino")
    folder = _pick(tmp_path, classifier, runtime)
    model = hf_sparse.load_runtime(folder)
    inputs = _inputs(folder)
    with torch.inference_mode():
        ref = BertForSequenceClassification.from_pretrained(folder).eval()(**inputs).logits
        out = model(**inputs).logits.float()
    assert out.shape == ref.shape == (2, 2)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < MODEL_TOLERANCES[runtime], err
    if runtime == "bf16":
        assert next(model.parameters()).dtype == torch.bfloat16
    elif runtime == "torch-dynamic-int8":
        assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in model.modules())
    else:
        assert isinstance(model, OpenVINOModel) and set(model.input_names) <= set(inputs)
        # a longer batch than the one it was converted with (shapes are dynamic), and a missing input is named
        longer = dict(AutoTokenizer.from_pretrained(folder)(["the plot " * 20], return_tensors="pt"))
        assert model(**longer).logits.shape == (1, 2)
        with pytest.raises(RuntimeLoadError, match="attention_mask"):
            model(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"])


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (None, "not found: load_runtime reads a folder a compress job saved"),
        ("{not json", "not readable JSON"),
        ('["bf16"]', "must be a JSON object with a string 'runtime'"),
        ('{"runtime": "fp16"}', "unknown configuration 'fp16'; known: bf16, torch-dynamic-int8"),
        ('{"runtime": "bf16", "task": "speech"}', "unknown task 'speech'"),
        ('{"runtime": "bf16", "task": 3}', "'task' must be a string"),
        ('{"runtime": "' + "x" * 5000 + '"}', "unknown configuration"),
    ],
)
def test_a_folder_that_is_not_a_runtime_pick_gets_a_typed_error(tmp_path, classifier, write, match):
    folder = _pick(tmp_path, classifier, "bf16")
    if write is None:
        (folder / RUNTIME_FILE).unlink()
    else:
        (folder / RUNTIME_FILE).write_text(write)
    with pytest.raises(RuntimeLoadError, match=match) as err:
        load_runtime(folder)
    assert len(str(err.value)) < 1000  # the file's content is quoted bounded


def test_openvino_is_refused_for_a_task_it_was_never_measured_on(tmp_path):
    source = _save_tiny_bert(tmp_path / "tok", cls=BertForTokenClassification)
    folder = _pick(tmp_path, source, "openvino-int8-weights", task="token-classification")
    with pytest.raises(RuntimeLoadError, match="only measured and loaded for text classification"):
        load_runtime(folder)
    # the torch configurations load that task with its own auto class
    (folder / RUNTIME_FILE).write_text(json.dumps({"runtime": "torch-dynamic-int8", "task": "token-classification"}))
    model = load_runtime(folder)
    assert model(**_inputs(folder)).logits.shape[:2] == _inputs(folder)["input_ids"].shape


@pytest.mark.parametrize("runtime", ["torch-dynamic-int8", "openvino-int8-weights"])
def test_another_encoder_family_loads_too(tmp_path, runtime):
    # DistilBERT takes no token_type_ids, which the saved (BERT) tokenizer returns: the conversion uses what the
    # model's forward accepts
    if runtime == "openvino-int8-weights":
        pytest.importorskip("openvino")
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    source = _save_tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    folder = _pick(tmp_path, source, runtime)
    inputs = _inputs(folder)
    inputs.pop("token_type_ids")
    with torch.inference_mode():
        ref = DistilBertForSequenceClassification.from_pretrained(folder).eval()(**inputs).logits
        out = load_runtime(folder)(**inputs).logits
    assert ((out - ref).norm() / ref.norm()).item() < MODEL_TOLERANCES[runtime]
