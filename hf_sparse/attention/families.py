"""What the ``hf_sparse`` attention implementation does with each model family's attention call.

The implementation was designed on BERT-like encoders; other families pass extra arguments to the attention
function (T5's relative position bias, Gemma 2's logit soft-capping, sinks ...), call it for cross-attention (BART,
T5), have no layer index on their attention modules (DistilBERT, ALBERT), or never call it at all (DeBERTa-v2
computes its disentangled attention in its own code). Each such case is either honoured or refused here with a
:class:`~hf_sparse.errors.ConfigError` that names the family and the feature: the rule is that no argument that
changes the result is ever dropped silently.
"""

from __future__ import annotations

from ..errors import ConfigError, quote

__all__ = [
    "HONOURED_KWARGS",
    "IGNORED_KWARGS",
    "family_name",
    "check_attention_kwargs",
    "is_cross_attention",
    "check_model_supported",
    "check_layer_selection",
    "layer_selection_error",
]

# Display names of the families the messages mention most (else the config's model_type).
_FAMILY_NAMES = {
    "bert": "BERT",
    "t5": "T5",
    "mt5": "mT5",
    "bart": "BART",
    "mbart": "mBART",
    "gemma2": "Gemma2",
    "gemma3_text": "Gemma3",
    "deberta": "DeBERTa",
    "deberta-v2": "DeBERTa-v2",
    "distilbert": "DistilBERT",
    "albert": "ALBERT",
    "llama": "Llama",
}

#: Keyword arguments of the attention call the implementation uses (see ``sparse_attention_forward``).
HONOURED_KWARGS = frozenset({"position_bias", "softcap", "sliding_window", "is_causal"})

#: Keyword arguments that do not change the result of attention itself: bookkeeping of the layer call (transformers'
#: ``TransformersKwargs``: the Trainer passes ``num_items_in_batch``), flash-attention-only settings, or what the
#: model's mask (built by our mask function) already carries (packed-sequence boundaries).
IGNORED_KWARGS = frozenset(
    {
        "num_items_in_batch",
        "output_router_logits",
        "seq_idx",
        "target_dtype",
        "deterministic",
        "position_ids",
        "cache_position",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "past_key_values",
        "past_key_value",
        "cache",
        "token_type_ids",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    }
)

# Why an argument cannot be honoured, for the arguments whose meaning is known.
_KNOWN_UNSUPPORTED = {
    "sinks": "attention sinks (an extra learned logit per head)",
    "s_aux": "attention sinks (an extra learned logit per head)",
    "alibi": "ALiBi position biases",
    "head_mask": "a head mask",
    "layer_head_mask": "a head mask",
    "attn_bias": "an additive attention bias",
    "score_mod": "a score modification function",
}


def family_name(model_config) -> str:
    """A readable family name for messages: ``T5``, ``DistilBERT`` ... (the config's ``model_type`` otherwise)."""
    model_type = getattr(model_config, "model_type", None) or "this model"
    return _FAMILY_NAMES.get(model_type, model_type)


def _where(module) -> str:
    return f"{family_name(getattr(module, 'config', None))} ({type(module).__name__})"


def check_attention_kwargs(module, kwargs: dict) -> None:
    """Raise when the attention call passes an argument that changes the result and that the implementation does
    not honour (e.g. ``sinks``); ``None`` values and the arguments in :data:`IGNORED_KWARGS` are fine.

    Raises:
        ConfigError: names the family, the argument and what to use instead.
    """
    for name, value in kwargs.items():
        if value is None or name in HONOURED_KWARGS or name in IGNORED_KWARGS:
            continue
        what = _KNOWN_UNSUPPORTED.get(name, f"the attention argument {quote(name)}")
        raise ConfigError(
            f"hf_sparse attention: {_where(module)} passes {what} (argument {quote(name)}), which the sparse "
            "attention implementation does not support yet and will not drop silently; use "
            "attn_implementation='eager' or 'sdpa' for this model."
        )


def is_cross_attention(module, q_length: int, kv_length: int, causal: bool) -> bool:
    """Whether this attention call is cross-attention (decoder queries over encoder keys).

    The pattern is a pattern over positions of one sequence, so cross-attention runs as full attention: the module
    says so (``is_cross_attention``, or a decoder module that is not causal, as BART's and T5's ``encoder_attn`` /
    ``EncDecAttention``, or a ``...CrossAttention`` class), or the call is bidirectional with as many queries as keys
    differing (an encoder's self-attention always has as many).
    """
    flag = getattr(module, "is_cross_attention", None)
    if isinstance(flag, bool):
        return flag
    if "CrossAttention" in type(module).__name__:
        return True
    if getattr(module, "is_decoder", False) is True and getattr(module, "is_causal", None) is False:
        return True
    return not causal and q_length != kv_length


def check_model_supported(model) -> None:
    """Raise when the model computes attention in its own code, so that ``attn_implementation="hf_sparse"`` would
    never run (DeBERTa-v2's disentangled attention).

    transformers decides this by reading the modeling file (``_can_set_attn_implementation``); after switching, the
    model's config also says whether the switch took.

    Raises:
        ConfigError: names the family.
    """
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    supported = True
    if callable(can_set):
        try:
            supported = bool(can_set())
        except Exception:  # a heuristic that cannot read the source: fall back on the config check below
            supported = True
    if supported:
        return
    family = family_name(model.config)
    feature = (
        "disentangled (content-to-position) attention"
        if str(getattr(model.config, "model_type", "")).startswith("deberta")
        else "attention"
    )
    raise ConfigError(
        f"hf_sparse attention: {family} ({type(model).__name__}) computes its {feature} in its own code, not through "
        "transformers' AttentionInterface, so attn_implementation='hf_sparse' would never run and the model would "
        "silently keep full attention; sparse attention does not support this family."
    )


def layer_selection_error(model_config, where: str) -> ConfigError:
    family = family_name(model_config)
    return ConfigError(
        f"hf_sparse attention: {family}'s attention modules ({where}) carry no layer index, so "
        "SparseAttentionConfig(layers=...) / layer_windows cannot select layers (the pattern would apply to every "
        "layer); leave layers and layer_windows empty to use the pattern in every layer, or use attn_implementation="
        "'eager' or 'sdpa'."
    )


def check_layer_selection(model, config) -> None:
    """Raise when ``config`` selects layers (``layers`` / ``layer_windows``) but the model's attention modules carry
    no layer index (DistilBERT, ALBERT), so the selection could not be honoured."""
    if not (config.layers or config.layer_windows):
        return
    if any(getattr(m, "layer_idx", None) is not None for m in model.modules()):
        return
    raise layer_selection_error(model.config, type(model).__name__)
