"""LoRA (peft) on SparseLinear layers: wrapping, forward, training only the adapters, adapter save/load on a sparse
checkpoint, merges that keep the pattern or go dense, exact unmerge, typed errors for what is not supported."""

import copy

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification, Trainer

import hf_sparse
from hf_sparse import PruningConfig, SparseLinear, sparsify_
from hf_sparse.errors import ConfigError, FormatError
from hf_sparse.formats import to_format
from hf_sparse.integrations.peft import (
    SparseLoraLinear,
    load_lora_adapter,
    merge_lora,
    register_sparse_lora,
    stored_mask,
)
from hf_sparse.testing import cpu_training_args, tiny_bert_classifier, tiny_classification_dataset

IDS = torch.arange(40).reshape(4, 10) % 128
SIMPLE_FORMATS = [(name, {}) for name in ("csr", "csc", "coo", "bitmask", "nm", "hybrid")]
FORMATS = [*SIMPLE_FORMATS, ("bsr", {"block": (4, 4)})]


def _lora_config(**overrides) -> LoraConfig:
    kwargs = dict(r=4, lora_alpha=8, target_modules=["query", "value"])
    kwargs.update(overrides)
    return register_sparse_lora(LoraConfig(**kwargs))


def _randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    # peft starts B at zero (the adapted model then equals the base); a non-zero B makes every comparison meaningful.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SparseLoraLinear):
                for lora_b in module.lora_B.values():
                    lora_b.weight.copy_(0.2 * torch.randn(lora_b.weight.shape, generator=g))


def _wrapped(model: nn.Module) -> dict[str, SparseLoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLoraLinear)}


def _index_tensors(layer: SparseLinear) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.weight_format().tensors().items() if not v.is_floating_point()}


def _float_tensors(layer: SparseLinear) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone() for k, v in layer.weight_format().tensors().items() if v.is_floating_point()}
    out["bias"] = layer.bias.detach().clone()
    return out


def _delta(layer: SparseLoraLinear, adapter: str = "default") -> torch.Tensor:
    """The reference LoRA update, from the adapter weights directly."""
    return layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight * layer.scaling[adapter]


# -- one layer, every format ----------------------------------------------------------------------------------------
class _OneLayer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def _layer_case(fmt: str, params: dict) -> tuple[SparseLinear, torch.Tensor]:
    """A (16, 32) SparseLinear whose stored positions are exactly the returned mask (explicit zeros included)."""
    g = torch.Generator().manual_seed(0)
    rows, cols = 16, 32
    weight = torch.randn(rows, cols, generator=g)
    if fmt == "bsr":  # whole 4x4 blocks
        mask = (torch.rand(4, 8, generator=g) < 0.4).repeat_interleave(4, 0).repeat_interleave(4, 1)
    elif fmt == "nm":  # exactly 2 of every 4, so no padding slots
        top = torch.rand(rows, cols // 4, 4, generator=g).argsort(-1)[..., :2]
        mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool).scatter_(-1, top, True).reshape(rows, cols)
    else:
        mask = torch.rand(rows, cols, generator=g) < 0.25
        if fmt == "hybrid":
            mask[::5] = True  # full rows: stored in the dense part
    weight[mask & (torch.rand(rows, cols, generator=g) < 0.1)] = 0.0
    return SparseLinear(to_format(fmt, weight, mask, **params), torch.randn(rows, generator=g)), mask


@pytest.mark.parametrize("fmt, params", FORMATS)
def test_one_layer_forward_merge_and_exact_unmerge(fmt, params):
    layer, mask = _layer_case(fmt, params)
    dense, bias = layer.dense_weight(), layer.bias.detach().clone()
    indices, values = _index_tensors(layer), _float_tensors(layer)
    model = get_peft_model(_OneLayer(layer), _lora_config(target_modules=["proj"]))
    wrapper = model.base_model.model.proj
    assert isinstance(wrapper, SparseLoraLinear) and wrapper.get_base_layer() is layer
    assert torch.equal(stored_mask(layer), mask)
    _randomize_adapters(model)
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(2))
    delta = _delta(wrapper).detach()
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.linear(x, dense + delta, bias), rtol=1e-5, atol=1e-5)

        model.merge_adapter()
        assert wrapper.merged
        assert all(torch.equal(t, indices[k]) for k, t in _index_tensors(layer).items())
        torch.testing.assert_close(layer.dense_weight(), dense + delta * mask, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model(x), F.linear(x, dense + delta * mask, bias), rtol=1e-5, atol=1e-5)

        model.unmerge_adapter()
        assert not wrapper.merged
        assert all(torch.equal(t, values[k]) for k, t in _float_tensors(layer).items())  # bit for bit
        torch.testing.assert_close(model(x), F.linear(x, dense + delta, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt, params", [("csr", {}), ("bsr", {"block": (4, 4)}), ("hybrid", {})])
def test_one_layer_merge_lora_both_ways(fmt, params):
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    for keep_pattern in (True, False):
        layer, mask = _layer_case(fmt, params)
        dense, bias = layer.dense_weight(), layer.bias.detach().clone()
        model = get_peft_model(_OneLayer(layer), _lora_config(target_modules=["proj"], lora_bias=True))
        _randomize_adapters(model)
        wrapper = model.base_model.model.proj
        with torch.no_grad():
            nn.init.normal_(wrapper.lora_B["default"].bias)
        delta = _delta(wrapper).detach()
        new_bias = bias + wrapper.lora_B["default"].bias.detach() * wrapper.scaling["default"]
        merged = merge_lora(model, keep_pattern=keep_pattern)
        assert not any(isinstance(m, SparseLoraLinear) for m in merged.modules())
        with torch.no_grad():
            if keep_pattern:
                assert merged.proj is layer and layer.format == fmt
                expected = F.linear(x, dense + delta * mask, new_bias)
            else:
                assert type(merged.proj) is nn.Linear
                expected = F.linear(x, dense + delta, new_bias)
            torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


# -- a sparse BERT --------------------------------------------------------------------------------------------------
def _sparse_bert() -> nn.Module:
    model = tiny_bert_classifier(seed=0)
    hf_sparse.apply_(model, PruningConfig(sparsity=0.85))
    sparsify_(model, format="csr", progress=False)
    return model


@pytest.fixture
def sparse_dir(tmp_path):
    out = tmp_path / "sparse"
    _sparse_bert().save_pretrained(out)
    return out


def _csr_mask(layer: SparseLinear) -> torch.Tensor:
    """The stored positions of a CSR layer, read from its indices (independently of ``stored_mask``)."""
    crow = layer.weight_crow_indices.to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(layer.out_features), torch.diff(crow))
    mask = torch.zeros(layer.out_features, layer.in_features, dtype=torch.bool)
    mask[rows, layer.weight_col_indices.to(torch.int64)] = True
    return mask


def _dense_reference(peft_model: PeftModel, keep_pattern: bool) -> nn.Module:
    """The base model with every adapted layer replaced by an nn.Linear holding ``W + delta`` (masked by the stored
    positions when ``keep_pattern``): what a merge should compute."""
    reference = copy.deepcopy(peft_model.get_base_model())
    for name, wrapper in _wrapped(reference).items():
        base = wrapper.get_base_layer()
        delta = _delta(wrapper).detach()
        weight = base.dense_weight().detach() + (delta * _csr_mask(base) if keep_pattern else delta)
        linear = nn.Linear(base.in_features, base.out_features)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(base.bias)
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent), child, linear)
    return reference


def test_lora_wraps_the_sparse_targets_and_trains_only_the_adapters(tmp_path):
    model = get_peft_model(_sparse_bert(), _lora_config())
    wrapped = _wrapped(model)
    assert sorted(n.rsplit(".", 4)[-1] for n in wrapped) == ["query", "query", "value", "value"]
    assert all(isinstance(w.get_base_layer(), SparseLinear) for w in wrapped.values())
    assert isinstance(model.base_model.model.bert.encoder.layer[0].attention.self.key, SparseLinear)  # not a target
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = cpu_training_args(tmp_path / "run", max_steps=3, learning_rate=1e-2, per_device_train_batch_size=8)
    Trainer(model=model, args=args, train_dataset=tiny_classification_dataset(n=32, seed=0)).train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".lora_B." in k for k in changed)  # B starts at zero: it moved
    assert all(".lora_A." in k or ".lora_B." in k for k in changed)  # sparse values, biases, embeddings: untouched


def test_adapter_saves_and_loads_on_a_fresh_sparse_checkpoint(tmp_path, sparse_dir):
    base = AutoModelForSequenceClassification.from_pretrained(sparse_dir)
    model = get_peft_model(base, _lora_config())
    _randomize_adapters(model)
    model.eval()
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "adapter")

    fresh = AutoModelForSequenceClassification.from_pretrained(sparse_dir).eval()
    with torch.no_grad():
        base_logits = fresh(IDS).logits
    loaded = load_lora_adapter(fresh, tmp_path / "adapter")
    assert isinstance(loaded, PeftModel) and len(_wrapped(loaded)) == 4
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference by default
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)

        # a second copy of it, added to the PeftModel under another name
        assert load_lora_adapter(loaded, tmp_path / "adapter", adapter_name="again") is loaded
        loaded.set_adapter("again")
        torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)
        # mixed batches: each row picks its adapter, "__base__" none
        mixed = loaded(IDS, adapter_names=["default", "__base__", "again", "__base__"]).logits
        torch.testing.assert_close(mixed[[0, 2]], expected[[0, 2]], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mixed[[1, 3]], base_logits[[1, 3]], rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="already has an adapter named 'again'"):
        load_lora_adapter(loaded, tmp_path / "adapter", adapter_name="again")


@pytest.mark.parametrize("via", ["merge_lora", "merge_and_unload"])
def test_merge_keeping_the_pattern_saves_and_reloads_as_a_sparse_checkpoint(tmp_path, sparse_dir, via):
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(sparse_dir), _lora_config())
    _randomize_adapters(model)
    model.eval()
    indices = {n: _index_tensors(w.get_base_layer()) for n, w in _wrapped(model.get_base_model()).items()}
    with torch.no_grad():
        adapted = model(IDS).logits
        expected = _dense_reference(model, keep_pattern=True)(IDS).logits
    merged = merge_lora(model) if via == "merge_lora" else model.merge_and_unload()

    assert not any(isinstance(m, SparseLoraLinear) for m in merged.modules())
    assert sum(isinstance(m, SparseLinear) for m in merged.modules()) == 12
    for name, before in indices.items():
        layer = merged.get_submodule(name)
        assert isinstance(layer, SparseLinear) and layer.format == "csr"
        assert all(torch.equal(t, before[k]) for k, t in _index_tensors(layer).items())
    with torch.no_grad():
        got = merged(IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, adapted, atol=1e-4)  # the delta at pruned positions was dropped, as documented

    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert sum(isinstance(m, SparseLinear) for m in reloaded.modules()) == 12
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, got, rtol=0, atol=0)


def test_dense_merge_equals_the_adapted_model_and_reloads(tmp_path, sparse_dir):
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(sparse_dir), _lora_config())
    _randomize_adapters(model)
    model.eval()
    names = list(_wrapped(model.get_base_model()))
    with torch.no_grad():
        adapted = model(IDS).logits
        expected = _dense_reference(model, keep_pattern=False)(IDS).logits
    merged = merge_lora(model, keep_pattern=False)
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in names)  # the sparsity of these is gone
    assert sum(isinstance(m, SparseLinear) for m in merged.modules()) == 8  # the untargeted ones stay sparse
    with torch.no_grad():
        got = merged(IDS).logits
    torch.testing.assert_close(got, adapted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    merged.save_pretrained(tmp_path / "merged")
    assert len(merged.config.quantization_config.modules) == 8
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert all(type(reloaded.get_submodule(n)) is nn.Linear for n in names)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, got, rtol=0, atol=0)


def test_merge_unmerge_round_trip_restores_the_exact_values():
    model = get_peft_model(_sparse_bert(), _lora_config())
    model.add_adapter("second", _lora_config(r=2))
    _randomize_adapters(model)
    model.eval()
    layers = {n: w.get_base_layer() for n, w in _wrapped(model).items()}
    original = {n: _float_tensors(layer) for n, layer in layers.items()}
    with torch.no_grad():
        adapted = model(IDS).logits
        model.merge_adapter(["default"])
        model.merge_adapter(["second"])  # merged one after the other
        assert all(w.merged_adapters == ["default", "second"] for w in _wrapped(model).values())
        assert any(not torch.equal(layers[n].weight_values, original[n]["values"]) for n in layers)
        model.unmerge_adapter()
        for name, layer in layers.items():
            assert all(torch.equal(t, original[name][k]) for k, t in _float_tensors(layer).items())
        model.set_adapter("default")
        torch.testing.assert_close(model(IDS).logits, adapted, rtol=0, atol=0)
        # disabling adapters while merged unmerges them first, exactly
        model.merge_adapter()
        with model.disable_adapter():
            model(IDS)
        for name, layer in layers.items():
            assert all(torch.equal(t, original[name][k]) for k, t in _float_tensors(layer).items())


def test_unsupported_options_raise_typed_errors(tmp_path):
    with pytest.raises(ConfigError, match="plain LoRA only.*use_dora"):
        get_peft_model(_sparse_bert(), _lora_config(use_dora=True))
    with pytest.raises(ConfigError, match="init_lora_weights='pissa' is not supported"):
        get_peft_model(_sparse_bert(), _lora_config(init_lora_weights="pissa"))
    with pytest.raises(ConfigError, match="needs a peft LoraConfig"):
        register_sparse_lora(IA3Config(target_modules=["query"], feedforward_modules=[]))
    with pytest.raises(ConfigError, match="needs a peft PeftModel or LoraModel"):
        merge_lora(_sparse_bert())
    with pytest.raises(ConfigError, match="needs a SparseLinear"):
        stored_mask(nn.Linear(4, 4))
    # without the registration peft itself refuses the unknown layer type
    with pytest.raises(ValueError, match="not supported"):
        get_peft_model(_sparse_bert(), LoraConfig(target_modules=["query"]))

    model = get_peft_model(_sparse_bert(), _lora_config())
    wrapper = next(iter(_wrapped(model).values()))
    values = _float_tensors(wrapper.get_base_layer())
    with torch.no_grad():
        wrapper.lora_B["default"].weight.fill_(float("nan"))
    with pytest.raises(FormatError, match="non-finite"):
        wrapper.merge(safe_merge=True)
    assert not wrapper.merged
    assert all(torch.equal(t, values[k]) for k, t in _float_tensors(wrapper.get_base_layer()).items())


def test_without_peft_the_integration_names_the_package_to_install():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['peft'] = None\n"
        "from hf_sparse.errors import MissingPackageError\n"
        "try:\n"
        "    import hf_sparse.integrations.peft\n"
        "except MissingPackageError as exc:\n"
        "    print(type(exc).__name__, exc.install)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == 'MissingPackageError pip install "peft>=0.15"'
