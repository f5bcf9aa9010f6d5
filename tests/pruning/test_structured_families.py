"""Structured pruning on every model family of the module-role table: the physically shrunk model computes what the
original computes with the same heads / neurons masked (their contribution zeroed at the projection that reads
them) or the same layers skipped; checkpoints reload at the new sizes; decoders generate the same greedy tokens with
and without the KV cache; and what cannot be honoured is refused with the typed error naming family and feature."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_sparse import PruningConfig, student_from_teacher
from hf_sparse.errors import ConfigError
from hf_sparse.nn.roles import UnsupportedFamilyError, layer_lists
from hf_sparse.nn.structure import LayerConfigView, find_layers
from hf_sparse.pruning import prune_
from hf_sparse.pruning.structured import (
    StructuredPruningConfig,
    drop_layers_,
    head_magnitude_scores,
    prune_heads_,
    prune_neurons_,
    structured_prune_,
)
from hf_sparse.pruning.units import shrink_masked_units_, unit_modules
from hf_sparse.testing.families import (
    FAMILIES,
    check_reload_in_fresh_process,
    logits_of,
    reload_in_process,
    tiny_inputs,
    tiny_model,
)

ALL = list(FAMILIES)
GENERATES = [f for f, s in FAMILIES.items() if s.kind in ("decoder", "seq2seq")]
ATOL = 1e-5
#: config fields that set the depth of each tiny family (3 layers per list for the layer tests)
DEPTH = {
    "t5": {"num_layers": 3, "num_decoder_layers": 3},
    "bart": {"encoder_layers": 3, "decoder_layers": 3},
    "distilbert": {"n_layers": 3},
    "gpt2": {"n_layer": 3},
}


def _greedy_agrees(family, model, inputs):
    if family not in GENERATES:
        return
    kwargs = dict(input_ids=inputs["input_ids"][:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True, eos_token_id=None)
        uncached = model.generate(**kwargs, use_cache=False, eos_token_id=None)
    assert cached.shape[1] == kwargs["input_ids"].shape[1] + 5 or model.config.is_encoder_decoder
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def _head_plan(model):
    """Query heads to remove per layer: a whole key/value group under grouped-query attention (a different one in
    each layer), two heads of layer 0 and one of the others without it, and the same heads in every layer of a T5
    stack (its layers share the first layer's position bias)."""
    plan = {}
    for p in find_layers(model):
        hq, _ = p.attention.sizes(model)
        r = p.attention.group
        if r > 1:
            plan[p.key] = list(range(r)) if p.index == 0 else list(range(hq - r, hq))
        elif model.config.model_type == "t5":
            plan[p.key] = [1] if p.stack == "encoder" else [0, 2]
        else:
            plan[p.key] = [1, hq - 1] if p.index == 0 else [0]
    return plan


def _masked(model, inputs, heads, neurons):
    """Logits of the unpruned model with the named heads' contexts and neurons' activations zeroed at the input of
    the projection that reads them (the attention output and the FFN down projection)."""
    layers = {p.key: p for p in find_layers(model)}
    handles = []

    def zero(cols):
        def hook(module, args):
            x = args[0].clone()
            x[..., cols] = 0.0
            return (x, *args[1:])

        return hook

    for key, hs in heads.items():
        d = layers[key].attention.head_dim
        cols = [h * d + j for h in hs for j in range(d)]
        handles.append(model.get_submodule(layers[key].attention.o).register_forward_pre_hook(zero(cols)))
    for key, ns in neurons.items():
        handles.append(model.get_submodule(layers[key].ffn.down).register_forward_pre_hook(zero(list(ns))))
    try:
        return logits_of(model, inputs)
    finally:
        for h in handles:
            h.remove()


def _assert_equals_reference(got, reference, unchanged):
    """``got`` equals ``reference`` within ``ATOL``, and within 1% of how far the masking (or skipping) moved the
    output from ``unchanged`` -- random tiny encoders have logits near 0.01, where ``ATOL`` alone would be loose."""
    effect = float((reference - unchanged).abs().max())
    assert effect > 0, "the masks do not change the output: the comparison would be vacuous"
    torch.testing.assert_close(got, reference, atol=min(ATOL, effect / 100), rtol=0)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


# -- heads and neurons ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ALL)
def test_heads_and_neurons_shrink_equals_masking_and_reloads(family, tmp_path):
    model = tiny_model(family, seed=1)
    inputs = tiny_inputs(family)
    heads = _head_plan(model)
    neurons = {p.key: list(range(0, 60, 3)) for p in find_layers(model)}
    heads_before = {p.key: p.attention.sizes(model)[0] for p in find_layers(model)}
    reference = _masked(model, inputs, heads, neurons)
    unmasked = logits_of(model, inputs)
    before = _n_params(model)
    left = prune_heads_(model, heads)
    assert left == {k: heads_before[k] - len(hs) for k, hs in heads.items()}
    prune_neurons_(model, neurons)
    assert _n_params(model) < before
    _assert_equals_reference(logits_of(model, inputs), reference, unmasked)
    layers = {p.key: p for p in find_layers(model)}
    for key in heads:
        hq, hkv = layers[key].attention.sizes(model)
        assert hq == left[key] and hq == hkv * layers[key].attention.group
    structure = model.config.quantization_config.structure
    assert len(structure["attention"]) == len(heads) and len(structure["ffn"]) == len(neurons)
    _greedy_agrees(family, model, inputs)

    loaded = reload_in_process(model, tmp_path)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert {n: tuple(p.shape) for n, p in loaded.named_parameters()} == shapes
    torch.testing.assert_close(logits_of(loaded, inputs), logits_of(model, inputs), atol=0, rtol=0)
    _greedy_agrees(family, loaded, inputs)


def test_fresh_process_reload_of_fused_grouped_conv1d_and_tied_layouts(tmp_path):
    """Phi-3 (fused qkv, grouped-query, head counts read from the config), GPT-2 (Conv1D), T5 (heads tied to the
    position bias) and ModernBERT (fused Wqkv and Wi) rebuild in a process that never saw the pruning."""
    cases = []
    for family in ("phi3", "gpt2", "t5", "modernbert"):
        model = tiny_model(family, seed=2)
        prune_heads_(model, _head_plan(model))
        prune_neurons_(model, {p.key: [0, 7, 9] for p in find_layers(model)})
        cases.append((family, model, tmp_path / family))
    check_reload_in_fresh_process(cases)


def test_grouped_query_attention_removes_whole_kv_groups():
    # 8 query heads of size 8 in 2 groups: 4 query heads per key/value head
    model = tiny_model("llama", seed=0, num_attention_heads=8, num_key_value_heads=2)
    prune_heads_(model, {0: [4, 5, 6, 7]})
    att = model.model.layers[0].self_attn
    assert att.q_proj.out_features == 4 * 8 and att.k_proj.out_features == att.v_proj.out_features == 8
    assert att.o_proj.in_features == 4 * 8 and att.num_key_value_groups == 4
    assert head_magnitude_scores(model)[0].shape == (1,) and head_magnitude_scores(model)[1].shape == (2,)
    with pytest.raises(UnsupportedFamilyError, match=r"Llama.*split key/value groups \[0\].*heads \[0, 1, 2, 3\]"):
        prune_heads_(model, {1: [0, 1]})
    with pytest.raises(ConfigError, match="removing all 4 heads of layer 0"):
        prune_heads_(model, {0: [0, 1, 2, 3]})


def test_phi3_layers_get_their_own_head_counts():
    model = tiny_model("phi3", seed=0)
    prune_heads_(model, {1: [2, 3]})
    attention = model.model.layers[1].self_attn
    assert isinstance(attention.config, LayerConfigView)
    assert attention.config.num_attention_heads == 2 and attention.config.num_key_value_heads == 1
    assert model.config.num_attention_heads == 4  # the model's config, and layer 0, keep the full counts
    assert model.model.layers[0].self_attn.config is model.config
    assert attention.config._attn_implementation == model.config._attn_implementation


def test_deberta_position_projections_lose_the_same_head_rows():
    model = tiny_model("deberta-v2", seed=0)
    prune_heads_(model, {0: [0, 2]})
    att = model.deberta.encoder.layer[0].attention.self
    assert att.pos_key_proj.out_features == att.pos_query_proj.out_features == att.key_proj.out_features == 16
    assert att.num_attention_heads == 2 and att.all_head_size == 16


def test_albert_prunes_the_shared_layer_for_every_repetition():
    model = tiny_model("albert", seed=0)
    inputs = tiny_inputs("albert")
    assert [p.key for p in find_layers(model)] == [0]  # one shared layer, run config.num_hidden_layers times
    reference = _masked(model, inputs, {0: [3]}, {0: [1, 2]})
    unchanged = logits_of(model, inputs)
    prune_heads_(model, {0: [3]})
    prune_neurons_(model, {0: [1, 2]})
    _assert_equals_reference(logits_of(model, inputs), reference, unchanged)
    with pytest.raises(ConfigError, match=r"layer indices \[1\] are out of range"):
        prune_heads_(model, {1: [0]})


def test_t5_heads_are_tied_across_a_stack():
    model = tiny_model("t5", seed=0)
    expected = logits_of(model, tiny_inputs("t5"))
    with pytest.raises(UnsupportedFamilyError, match=r"T5.*encoder stack must lose the same heads"):
        prune_heads_(model, {"encoder.0": [1]})
    with pytest.raises(UnsupportedFamilyError, match=r"T5.*keep the same heads in every layer"):
        unit_modules(model, "head")
    torch.testing.assert_close(logits_of(model, tiny_inputs("t5")), expected, atol=0, rtol=0)  # nothing changed
    report = structured_prune_(model, StructuredPruningConfig(heads_fraction=0.5))
    kept = {layer["layer"]: layer["heads_kept"] for layer in report["layers"]}
    assert kept["encoder.0"] == kept["encoder.1"] and kept["decoder.0"] == kept["decoder.1"]
    assert model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.shape == (8, 2)


def test_seq2seq_layers_need_their_list_named():
    model = tiny_model("bart", seed=0)
    with pytest.raises(UnsupportedFamilyError, match=r"BART.*layer 0 is ambiguous.*\['encoder', 'decoder'\]"):
        prune_neurons_(model, {0: [1]})
    with pytest.raises(UnsupportedFamilyError, match="ambiguous"):
        structured_prune_(model, StructuredPruningConfig(layers_to_drop=(0,)))
    assert prune_heads_(model, {"decoder.1": [0]}) == {"decoder.1": 3}
    assert model.model.decoder.layers[1].self_attn.q_proj.out_features == 24
    assert model.model.decoder.layers[1].encoder_attn.q_proj.out_features == 32  # cross-attention is not pruned
    with pytest.raises(ConfigError, match=r"out of range"):
        prune_heads_(model, {"decoder.5": [0]})


def test_head_masks_on_grouped_query_attention_shrink_to_the_same_outputs():
    model = tiny_model("qwen2", seed=0, num_hidden_layers=3)
    inputs = tiny_inputs("qwen2")
    masked = copy.deepcopy(model)
    prune_(masked, PruningConfig(granularity="head", sparsity=0.5, scope="layer"), shrink=False)
    report = prune_(model, PruningConfig(granularity="head", sparsity=0.5, scope="layer"))
    assert report["shrunk"]["heads"] == {0: 2, 1: 2, 2: 2}  # one of two kv groups (two query heads) per layer
    torch.testing.assert_close(logits_of(model, inputs), logits_of(masked, inputs), atol=ATOL, rtol=0)
    _greedy_agrees("qwen2", model, inputs)


@pytest.mark.parametrize("family", ["modernbert", "gpt2", "llama", "bart"])
def test_structured_prune_leaves_task_heads_and_embeddings_alone(family):
    model = tiny_model(family, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    structured_prune_(model, StructuredPruningConfig(heads_fraction=0.5, neurons_fraction=0.5))
    after = dict(model.named_parameters())
    pruned = {n for n in before if after[n].shape != before[n].shape}
    assert pruned and all(".layers." in n or ".h." in n or ".layer." in n for n in pruned)
    if family == "modernbert":  # head.dense is a task head (hidden -> hidden, like an FFN): never pruned
        torch.testing.assert_close(after["head.dense.weight"], before["head.dense.weight"], atol=0, rtol=0)


# -- whole layers --------------------------------------------------------------------------------------------------
def _skip(module, args, kwargs, out):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


def _drops(family):
    if FAMILIES[family].kind == "seq2seq":
        return ["encoder.0", "decoder.1"]  # T5's encoder block 0 holds the position bias table: it moves
    return [1] if family == "modernbert" else [0]


@pytest.mark.parametrize("family", ALL)
def test_dropping_layers_equals_skipping_them_and_reloads(family, tmp_path):
    model = tiny_model(family, seed=1, **DEPTH.get(family, {"num_hidden_layers": 3}))
    inputs = tiny_inputs(family)
    drop = _drops(family)
    lists = layer_lists(model)
    if family == "albert":  # one shared layer run 3 times: dropping one repetition is running it twice
        reference = logits_of(tiny_model(family, seed=1, num_hidden_layers=2), inputs)
    else:
        handles = []
        for key in drop:
            stack, _, index = str(key).rpartition(".")
            modules = next(m for n, m in lists if not stack or stack in n.split("."))
            handles.append(modules[int(index)].register_forward_hook(_skip, with_kwargs=True))
        reference = logits_of(model, inputs)
        for h in handles:
            h.remove()
    unchanged = logits_of(model, inputs)
    assert sorted(drop_layers_(model, drop)) == sorted(drop)
    _assert_equals_reference(logits_of(model, inputs), reference, unchanged)
    for _, modules in layer_lists(model):
        indices = [sub.layer_idx for layer in modules for sub in layer.modules() if hasattr(sub, "layer_idx")]
        assert indices == sorted(indices) and (not indices or indices[-1] == len(modules) - 1)
    _greedy_agrees(family, model, inputs)
    loaded = reload_in_process(model, tmp_path)
    torch.testing.assert_close(logits_of(loaded, inputs), logits_of(model, inputs), atol=0, rtol=0)
    _greedy_agrees(family, loaded, inputs)


def test_dropping_layers_updates_layer_types_for_the_cache():
    model = tiny_model("gemma2", seed=0, num_hidden_layers=4)
    types = list(model.config.layer_types)
    drop_layers_(model, [1])
    assert model.config.num_hidden_layers == 3 and model.config.layer_types == [types[0], types[2], types[3]]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]


def test_layer_refusals_name_family_and_reason():
    with pytest.raises(UnsupportedFamilyError, match=r"ModernBERT.*first layer is built differently"):
        drop_layers_(tiny_model("modernbert"), [0])
    gpt2 = tiny_model("gpt2", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(UnsupportedFamilyError, match=r"GPT-2.*scale_attn_by_inverse_layer_idx"):
        drop_layers_(gpt2, [0])
    assert drop_layers_(gpt2, [1]) == [1]  # the last layer: no index changes
    with pytest.raises(UnsupportedFamilyError, match=r"ALBERT.*several layer groups"):
        drop_layers_(tiny_model("albert", num_hidden_groups=2), [0])
    with pytest.raises(ConfigError, match="cannot drop all 2 layers of the decoder"):
        drop_layers_(tiny_model("t5"), ["decoder.0", "decoder.1"])


# -- students ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3", "t5", "bart", "deberta-v2"])
def test_student_from_teacher_cuts_any_family(family, tmp_path):
    teacher = tiny_model(family, seed=0, **{k: 4 for k in DEPTH.get(family, {"num_hidden_layers": 3})})
    inputs = tiny_inputs(family)
    student = student_from_teacher(teacher, keep_every=2)
    depths = [len(m) for _, m in layer_lists(student)]
    assert depths == [2] * len(depths) and _n_params(student) < _n_params(teacher)
    reloaded = reload_in_process(student, tmp_path)
    torch.testing.assert_close(logits_of(reloaded, inputs), logits_of(student, inputs), atol=0, rtol=0)
    _greedy_agrees(family, student, inputs)


def test_student_of_a_seq2seq_model_names_the_list_for_keep_layers():
    teacher = tiny_model("t5", seed=0)
    with pytest.raises(UnsupportedFamilyError, match=r"student_from_teacher does not support the T5.*stack="):
        student_from_teacher(teacher, keep_layers=[1])
    student = student_from_teacher(teacher, keep_layers=[1], stack="decoder")
    assert len(student.encoder.block) == 2 and len(student.decoder.block) == 1
    assert student.config.num_decoder_layers == 1
    with pytest.raises(UnsupportedFamilyError, match=r"student_from_teacher does not support the ModernBERT"):
        student_from_teacher(tiny_model("modernbert", num_hidden_layers=4), keep_every=2)
    assert (
        len(student_from_teacher(tiny_model("modernbert", num_hidden_layers=4), keep_layers=[0, 2]).model.layers) == 2
    )


def test_t5_shrinks_only_heads_dead_in_every_layer_of_a_stack():
    model = tiny_model("t5", seed=0)
    inputs = tiny_inputs("t5")
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.o.weight[:, 8:16] = 0  # head 1 in both encoder layers
        model.encoder.block[1].layer[0].SelfAttention.o.weight[:, 8:16] = 0
        model.decoder.block[0].layer[0].SelfAttention.o.weight[:, 0:8] = 0  # head 0 in one decoder layer only
    expected = logits_of(model, inputs)
    report = shrink_masked_units_(model)
    assert report["heads"] == {"encoder.0": 3, "encoder.1": 3}
    assert model.decoder.block[0].layer[0].SelfAttention.n_heads == 4
    torch.testing.assert_close(logits_of(model, inputs), expected, atol=ATOL, rtol=0)
