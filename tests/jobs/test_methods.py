"""The Method registry: ``apply_`` dispatches every built-in method config, a plugin method registers once and is
dispatched the same way, and registrations are checked."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hf_sparse
from hf_sparse import ConfigError
from hf_sparse.attention import SparseAttentionConfig
from hf_sparse.config import BaseConfig, register_config
from hf_sparse.distillation import DistillationConfig
from hf_sparse.embeddings import EmbeddingCompressionConfig, TableCompression
from hf_sparse.lowrank import LowRankConfig
from hf_sparse.method import METHOD_REGISTRY, Method, method_for, register_method, unregister_method
from hf_sparse.pruning import PruningConfig, RegularizationConfig, StructuredPruningConfig
from hf_sparse.quantization import QuantizationConfig
from hf_sparse.registry import CONFIGS
from hf_sparse.testing import tiny_bert_classifier

BUILT_IN = {
    "attention",
    "distillation",
    "embeddings",
    "lowrank",
    "pruning",
    "quantization",
    "regularization",
    "structured",
}


def test_every_built_in_method_is_registered_with_its_config():
    assert hf_sparse.METHODS is METHOD_REGISTRY
    assert BUILT_IN <= set(hf_sparse.METHODS)  # hf_sparse.METHODS registers the built-in ones, whatever ran before
    for name in BUILT_IN:
        method = METHOD_REGISTRY.get(name)
        assert method.name == name and issubclass(method.config_class, BaseConfig)
    # The most specific registered class wins: a recipe section (a subclass) goes to its config's method.
    from hf_sparse.quantization.recipe import QuantizationSection

    assert method_for(QuantizationSection()) is METHOD_REGISTRY.get("quantization")
    assert method_for(PruningConfig()) is METHOD_REGISTRY.get("pruning")


def _nonzero(model) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


@pytest.mark.parametrize(
    ("config", "check"),
    [
        (PruningConfig(sparsity=0.5), lambda m, out: out["sparsity"] == pytest.approx(0.5, abs=0.01)),
        (
            StructuredPruningConfig(heads_fraction=0.5, criterion="magnitude"),
            lambda m, out: out["params_after"] < out["params_before"],
        ),
        (RegularizationConfig(group_lasso=1e-4), lambda m, out: out is not None),
        (
            QuantizationConfig(activation="dynamic"),
            lambda m, out: out and set(out.values()) <= {"qdense", "qcsr", "qbsr", "qnm"},
        ),
        (LowRankConfig(rank=4), lambda m, out: any("rank" in e for e in out.values())),
        (DistillationConfig(alpha=0.5), lambda m, out: out.attached),
        (
            SparseAttentionConfig(pattern="window", window=2),
            lambda m, out: m.config._attn_implementation == "hf_sparse",
        ),
        (
            EmbeddingCompressionConfig(tables={"word_embeddings": TableCompression(method="qrow", bits=8)}),
            lambda m, out: "bert.embeddings.word_embeddings" in out,
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseConfig) else "",
)
def test_apply_dispatches_every_method_config(config, check):
    model = tiny_bert_classifier()
    out = hf_sparse.apply_(model, config)
    assert check(model, out)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    model.train(False)
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_apply_names_the_registered_methods_for_an_unknown_config():
    @register_config("test_unregistered_method_config")
    @dataclasses.dataclass(frozen=True)
    class Lonely(BaseConfig):
        x: int = 1

    try:
        with pytest.raises(
            ConfigError, match=r"No hf_sparse method takes a Lonely; registered methods take: .*Pruning"
        ):
            hf_sparse.apply_(tiny_bert_classifier(), Lonely())
    finally:
        CONFIGS.unregister("test_unregistered_method_config")


def test_a_plugin_method_registers_once_and_apply_dispatches_it():
    @register_config("test_scale_head")
    @dataclasses.dataclass(frozen=True)
    class ScaleHead(BaseConfig):
        factor: float = 0.5

    def scale(model, config):
        with torch.no_grad():
            model.classifier.weight.mul_(config.factor)
        return {"scaled": "classifier"}

    method = Method(name="test_scale_head", config_class=ScaleHead, apply=scale, order=5)
    register_method(method)
    try:
        model = tiny_bert_classifier()
        before = model.classifier.weight.clone()
        assert hf_sparse.apply_(model, ScaleHead(factor=0.25)) == {"scaled": "classifier"}
        torch.testing.assert_close(model.classifier.weight, before * 0.25)
        with pytest.raises(ConfigError, match="method named 'test_scale_head' is already registered"):
            register_method(dataclasses.replace(method))
        with pytest.raises(ConfigError, match="already the config of method 'test_scale_head'"):
            register_method(dataclasses.replace(method, name="other_name"))
    finally:
        unregister_method("test_scale_head")
        CONFIGS.unregister("test_scale_head")
    assert "test_scale_head" not in METHOD_REGISTRY


def test_a_method_needs_a_config_class_and_a_callable_transform():
    with pytest.raises(ConfigError, match="config_class must be an hf_sparse config class"):
        Method(name="bad", config_class=dict, apply=lambda m, c: None)
    with pytest.raises(ConfigError, match="apply must be callable"):
        Method(name="bad", config_class=PruningConfig, apply=None)
    with pytest.raises(ConfigError, match="register_method needs a Method"):
        register_method({"name": "bad"})
