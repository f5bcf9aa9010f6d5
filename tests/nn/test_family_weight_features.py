"""The weight-level features on the tiny model of every family (GPT-2's ``Conv1D`` included), checked in numbers:
pruning (every criterion kind and granularity) zeroes what the masks say and the pruned model equals the dense one
with masked weights; ``sparsify_`` equals the pruned dense model and reloads identically; QAT converts and reloads
identically; low-rank factorisation reloads identically; a LoRA merge keeps the sparsity pattern; tied output layers
are refused, never pruned through the tie."""

import copy
import re
import warnings

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import Trainer, TrainingArguments
from transformers.pytorch_utils import Conv1D

from hf_sparse import (
    ConfigError,
    LowRankConfig,
    Pruner,
    PruningCallback,
    PruningConfig,
    QuantizationConfig,
    SparseLinear,
    convert_,
    factorize_,
    prepare_qat_,
    sparsify_,
)
from hf_sparse.integrations.peft import SparseLoraLinear, merge_lora, register_sparse_lora, stored_mask
from hf_sparse.nn.matching import DEFAULT_EXCLUDE, match_linears
from hf_sparse.pruning import wanda_prune_
from hf_sparse.pruning.calibration import calibrate_sequentially, collect_input_stats
from hf_sparse.testing import cpu_training_args, families

FAMILIES = sorted(families.FAMILIES)
#: One criterion and granularity per family, every pair of them on some family; GPT-2 gets every pair below.
GRANULARITY = {f: ("unstructured", "block", "nm")[i % 3] for i, f in enumerate(FAMILIES)}
CRITERION = {f: ("magnitude", "wanda", "sparsegpt", "random")[i // 3 % 4] for i, f in enumerate(FAMILIES)}
BLOCK = (2, 8)  # not square: a block laid along the wrong dimension would show


def _out_in(module: torch.nn.Module) -> torch.Tensor:
    # Written out here rather than through hf_sparse.nn.linear_like, so the test does not share the code it checks.
    return module.weight.detach().t() if isinstance(module, Conv1D) else module.weight.detach()


def _masked_reference(dense, masks):
    """A copy of the dense model with each mask applied to its stored weight by hand (a Conv1D's transposed)."""
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for name, mask in masks.items():
            module = ref.get_submodule(name)
            module.weight.mul_(mask.t() if isinstance(module, Conv1D) else mask)
    return ref


def _check_pattern(weight: torch.Tensor, granularity: str) -> None:
    rows, cols = weight.shape
    zero = weight == 0
    if granularity == "nm":  # 2:4 along the input dimension
        assert torch.equal(zero.reshape(rows, cols // 4, 4).sum(-1), torch.full((rows, cols // 4), 2))
    elif granularity == "block":  # every (2, 8) tile all zero or all kept
        tiles = zero.reshape(rows // BLOCK[0], BLOCK[0], cols // BLOCK[1], BLOCK[1]).sum(dim=(1, 3))
        assert bool(((tiles == 0) | (tiles == BLOCK[0] * BLOCK[1])).all())


def _prune_config(granularity: str, sparsity: float = 0.5, **kw) -> PruningConfig:
    return PruningConfig(sparsity=sparsity, schedule="oneshot", granularity=granularity, block=BLOCK, n=2, m=4, **kw)


def _check_pruned(model, dense, pruner, granularity, inputs):
    assert pruner.masks
    for name, mask in pruner.masks.items():
        weight = _out_in(model.get_submodule(name))
        assert tuple(mask.shape) == tuple(weight.shape), name
        assert bool((weight[~mask] == 0).all()), name
        _check_pattern(weight, granularity)
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.02)
    reference = _masked_reference(dense, pruner.masks)
    torch.testing.assert_close(families.logits_of(model, inputs), families.logits_of(reference, inputs))


def _prune_and_check(family: str, criterion: str, granularity: str) -> None:
    model, inputs = families.tiny_model(family), families.tiny_inputs(family)
    dense = copy.deepcopy(model)
    pruner = Pruner(model, _prune_config(granularity, criterion=criterion))
    pruner.calibration = [inputs]
    pruner.prune_to(0.5)
    if criterion == "sparsegpt":  # the surviving weights are reconstructed: only the zeros follow the masks
        for name, mask in pruner.masks.items():
            weight = _out_in(model.get_submodule(name))
            assert torch.equal(weight != 0, mask), name
            _check_pattern(weight, granularity)
        assert torch.isfinite(families.logits_of(model, inputs)).all()
    else:
        _check_pruned(model, dense, pruner, granularity, inputs)
    if criterion == "wanda" and granularity == "unstructured":  # Wanda compares within each output row
        for name in pruner.masks:
            weight = _out_in(model.get_submodule(name))
            assert torch.equal((weight == 0).sum(1), torch.full((weight.shape[0],), weight.shape[1] // 2)), name


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_zeroes_the_masks_and_equals_the_masked_dense_model(family):
    _prune_and_check(family, CRITERION[family], GRANULARITY[family])


@pytest.mark.parametrize("granularity", ["unstructured", "block", "nm"])
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_gpt2_conv1d_masks_are_out_in_at_every_criterion_and_granularity(criterion, granularity):
    assert isinstance(families.tiny_model("gpt2").transformer.h[0].mlp.c_fc, Conv1D)
    _prune_and_check("gpt2", criterion, granularity)


@pytest.mark.parametrize("family", FAMILIES)
def test_sequential_calibration_feeds_each_layer_what_the_model_feeds_it(family):
    # With nothing pruned, the block-by-block statistics are those of one pass of the model: each block gets the
    # arguments the model gives it (T5's shared position bias, ModernBERT's local-attention layers' masks and
    # rotary embeddings; 24 tokens exceed its 8-token window).
    model, inputs = families.tiny_model(family), families.tiny_inputs(family, seq_len=24)
    modules = match_linears(model, (), DEFAULT_EXCLUDE)
    want = collect_input_stats(model, [inputs], modules, "norms", progress=False)
    seen = {}

    def record(chosen, stats):
        seen.update({name: stats.sums[name] for name in chosen})

    calibrate_sequentially(model, [inputs], modules, "norms", record, progress=False)
    assert set(seen) == set(modules)
    for name in modules:
        torch.testing.assert_close(seen[name], want.sums[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_sequential_calibration_runs_the_decoder_on_the_pruned_encoder(family):
    model, inputs = families.tiny_model(family), families.tiny_inputs(family)
    modules = match_linears(model, (), DEFAULT_EXCLUDE)
    seen = {}

    def prune_encoder(chosen, stats):
        seen.update({name: stats.sums[name] for name in chosen})
        with torch.no_grad():
            for name, module in chosen.items():
                if name.startswith(("encoder.", "model.encoder.")):
                    module.weight.mul_(module.weight.abs() > module.weight.abs().median())

    calibrate_sequentially(model, [inputs], modules, "norms", prune_encoder, progress=False)
    # the decoder was calibrated on what the pruned encoder gives it: one pass of the final model agrees
    decoder = {n: m for n, m in modules.items() if ".decoder." in f".{n}"}
    want = collect_input_stats(model, [inputs], decoder, "norms", progress=False)
    for name in decoder:
        torch.testing.assert_close(seen[name], want.sums[name], rtol=1e-4, atol=1e-6, msg=name)


def test_albert_shared_layer_is_calibrated_at_every_depth_and_pruned_once():
    model, inputs = families.tiny_model("albert"), families.tiny_inputs("albert")
    depth = model.config.num_hidden_layers
    report = wanda_prune_(model, [inputs], 0.5, progress=False)
    # the one shared layer runs at every depth: its statistics count every call's tokens, not the first call's
    assert report["calibration"]["tokens"] == inputs["input_ids"].numel() * depth
    names = list(report["layers"])
    assert len(names) == len(set(names)) and all("albert_layers.0." in n for n in names)


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "t5", "bart"])
def test_an_output_layer_tied_to_the_embedding_is_refused(family):
    model = families.tiny_model(family)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    table = model.get_input_embeddings().weight.detach().clone()
    with pytest.raises(ConfigError, match="tied"):
        Pruner(model, PruningConfig(sparsity=0.5, target_modules=("lm_head",), exclude_modules=()))
    with pytest.raises(ConfigError, match="tied"):
        sparsify_(model, format="csr", target_modules=["lm_head"], exclude_modules=(), progress=False)
    with pytest.raises(ConfigError, match="tied"):
        prepare_qat_(model, QuantizationConfig(target_modules=("lm_head",), exclude_modules=()))
    assert torch.equal(model.get_input_embeddings().weight, table)


def _exactly(names) -> tuple[str, ...]:
    return tuple(re.escape(n) for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_factorised_and_quantised_layers_compute_what_they_replace_and_reload_identically(family, tmp_path):
    # A third of the Linear layers each: sparsify_ (pruned first), low rank, QAT; then one save and reload.
    model, inputs = families.tiny_model(family), families.tiny_inputs(family)
    names = list(match_linears(model, (), DEFAULT_EXCLUDE))
    sparse, factored, quantised = names[0::3], names[1::3], names[2::3]

    Pruner(model, _prune_config("unstructured", 0.6, target_modules=_exactly(sparse))).prune_to(0.6)
    want = families.logits_of(model, inputs)
    decisions = sparsify_(model, format="csr", target_modules=_exactly(sparse), progress=False)
    assert all(d.converted for d in decisions.values()) and set(decisions) == set(sparse)
    torch.testing.assert_close(families.logits_of(model, inputs), want, rtol=0, atol=1e-5)

    reference = copy.deepcopy(model)
    report = factorize_(model, LowRankConfig(rank=4, target_modules=_exactly(factored)), progress=False)
    assert all("format" in report[n] for n in factored)
    with torch.no_grad():  # the model with each weight replaced by its factors' product, by hand
        for name in factored:
            product = model.get_submodule(name).dense_weight()
            target = reference.get_submodule(name)
            target.weight.copy_(product.t() if isinstance(target, Conv1D) else product)
    before_qat = families.logits_of(model, inputs)
    torch.testing.assert_close(before_qat, families.logits_of(reference, inputs), rtol=1e-4, atol=1e-5)

    prepare_qat_(model, QuantizationConfig(target_modules=_exactly(quantised)))
    fake = families.logits_of(model, inputs)
    # 8-bit weights, one scale per output row: close to the float model (a grid along the wrong axis is not)
    assert (fake - before_qat).abs().max() <= 0.05 * before_qat.abs().max()
    assert set(convert_(model)) == set(quantised)
    converted = families.logits_of(model, inputs)
    torch.testing.assert_close(converted, fake, rtol=0, atol=1e-5)

    if family == "gpt2":  # the reload builds the shells where the fresh model has Conv1D layers
        families.check_reload_in_fresh_process([(family, model, tmp_path)])
    else:
        reloaded = families.reload_in_process(model, tmp_path)
        assert {type(reloaded.get_submodule(n)).__name__ for n in names} == {"SparseLinear", "QuantLinear"}
        torch.testing.assert_close(families.logits_of(reloaded, inputs), converted, rtol=0, atol=0)


def test_gpt2_pruned_in_place_saves_as_a_plain_gpt2_checkpoint(tmp_path):
    model, inputs = families.tiny_model("gpt2"), families.tiny_inputs("gpt2")
    Pruner(model, _prune_config("nm")).prune_to(0.5)
    reloaded = families.reload_in_process(model, tmp_path)
    assert "quantization_config" not in reloaded.config.to_dict()
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("transformer.h.0.mlp.c_fc.weight")
    assert tuple(stored.shape) == (64, 128)  # Conv1D layout (in, out), 2:4 along the input dimension
    _check_pattern(stored.t(), "nm")
    assert isinstance(reloaded.transformer.h[0].mlp.c_fc, Conv1D)
    torch.testing.assert_close(families.logits_of(reloaded, inputs), families.logits_of(model, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_merge_on_sparse_layers_keeps_the_pattern(family):
    model, inputs = families.tiny_model(family), families.tiny_inputs(family)
    Pruner(model, _prune_config(GRANULARITY[family])).prune_to(0.5)
    sparsify_(model, format="csr", progress=False)
    targets = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, SparseLinear)})
    config = LoraConfig(r=4, target_modules=targets, init_lora_weights="gaussian", fan_in_fan_out=family == "gpt2")
    peft_model = get_peft_model(model, register_sparse_lora(config))
    layers = {n: m for n, m in peft_model.base_model.model.named_modules() if isinstance(m, SparseLoraLinear)}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B["default"].weight.normal_(0, 0.1)
        before = {
            n: (m.get_base_layer().dense_weight(), stored_mask(m.get_base_layer()), m.get_delta_weight("default"))
            for n, m in layers.items()
        }
    merged = merge_lora(peft_model)
    for name, (weight, mask, delta) in before.items():
        layer = merged.get_submodule(name)
        assert isinstance(layer, SparseLinear), name
        assert torch.equal(stored_mask(layer), mask), name
        torch.testing.assert_close(layer.dense_weight(), weight + mask * delta, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(families.logits_of(merged, inputs)).all()


def test_gpt2_dense_lora_merge_gives_conv1d_layers_that_save_as_gpt2(tmp_path):
    model, inputs = families.tiny_model("gpt2"), families.tiny_inputs("gpt2")
    Pruner(model, _prune_config("unstructured")).prune_to(0.5)
    sparsify_(model, format="csr", target_modules=["c_attn"], progress=False)  # the other Conv1D layers stay dense
    config = LoraConfig(r=4, target_modules=["c_attn", "c_fc"], init_lora_weights="gaussian", fan_in_fan_out=True)
    peft_model = get_peft_model(model, register_sparse_lora(config))
    with torch.no_grad():
        for module in peft_model.modules():
            if hasattr(module, "lora_B"):
                for lora_b in module.lora_B.values():
                    lora_b.weight.normal_(0, 0.1)
    adapted = families.logits_of(peft_model, inputs)
    merged = merge_lora(peft_model, keep_pattern=False)
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    torch.testing.assert_close(families.logits_of(merged, inputs), adapted, rtol=1e-5, atol=1e-5)
    reloaded = families.reload_in_process(merged, tmp_path)
    assert "quantization_config" not in reloaded.config.to_dict()
    torch.testing.assert_close(families.logits_of(reloaded, inputs), adapted, rtol=1e-5, atol=1e-5)


def test_gpt2_pruning_callback_sees_gradients_out_in_and_keeps_pruned_weights_at_zero(tmp_path):
    model, inputs = families.tiny_model("gpt2").train(), families.tiny_inputs("gpt2", batch=4)
    callback = PruningCallback(PruningConfig(sparsity=0.5, criterion="movement", schedule="oneshot", start_step=2))
    # One backward pass by hand: the movement score of a Conv1D is -W * dL/dW in the (out, in) orientation.
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    state = transformers.TrainerState()
    callback.on_train_begin(args, state, transformers.TrainerControl(), model=model)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, module in callback.pruner.modules.items():
        if isinstance(module, Conv1D):
            expected = -(module.weight.detach().t() * module.weight.grad.t())
            torch.testing.assert_close(callback.pruner.score_state[name], expected)
    callback.on_train_end(args, state, transformers.TrainerControl(), model=model)

    model.zero_grad()
    data = [{**{k: v[i] for k, v in inputs.items()}, "labels": inputs["input_ids"][i]} for i in range(4)]
    callback = PruningCallback(PruningConfig(sparsity=0.5, criterion="movement", schedule="oneshot", start_step=2))
    training = cpu_training_args(tmp_path, per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2)
    Trainer(model=model, args=training, train_dataset=data, callbacks=[callback]).train()
    pruner = callback.pruner
    assert pruner.sparsity() == pytest.approx(0.5, abs=1e-3)
    for name, mask in pruner.masks.items():  # weight decay and two more AdamW steps did not revive a pruned weight
        assert bool((_out_in(model.get_submodule(name))[~mask] == 0).all()), name


def _training_rows(family: str, n: int = 4) -> list[dict]:
    inputs = families.tiny_inputs(family, batch=n)
    kind = families.FAMILIES[family].kind
    rows = []
    for i in range(n):
        row = {k: v[i] for k, v in inputs.items() if k != "decoder_input_ids"}
        # seq2seq batches carry labels only: the decoder inputs come from them (T5 has no other way to get them)
        row["labels"] = (
            torch.tensor(i % 2) if kind == "encoder" else inputs.get("decoder_input_ids", inputs["input_ids"])[i]
        )
        rows.append(row)
    return rows


@pytest.mark.parametrize("family", ["t5", "albert"])
def test_pruning_callback_with_calibration_from_the_training_data(family, tmp_path):
    model = families.tiny_model(family).train()
    config = PruningConfig(sparsity=0.5, criterion="wanda", schedule="oneshot", start_step=1, calibration_samples=4)
    callback = PruningCallback(config)
    training = cpu_training_args(tmp_path, per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(model=model, args=training, train_dataset=_training_rows(family), callbacks=[callback]).train()
    # every layer saw calibration tokens (T5's decoder too: its inputs come from the labels)
    assert not [w for w in caught if "saw no calibration tokens" in str(w.message)]
    pruner = callback.pruner
    assert any(n.startswith("decoder.") for n in pruner.masks) == (family == "t5")
    for name, mask in pruner.masks.items():  # Wanda's rows, and training did not revive a pruned weight
        weight = _out_in(model.get_submodule(name))
        assert torch.equal((~mask).sum(1), torch.full((weight.shape[0],), weight.shape[1] // 2)), name
        assert bool((weight[~mask] == 0).all()), name
