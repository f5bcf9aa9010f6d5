"""What the ``hf_sparse`` attention implementation does with each model family's attention call.

The implementation was designed on BERT-like encoders; other families pass extra arguments to the attention
function (T5's relative position bias, Gemma 2's logit soft-capping, sinks ...), call it for cross-attention (BART,
T5), have no layer index on their attention modules (DistilBERT, ALBERT), or never call it at all (DeBERTa-v2
computes its disentangled attention in its own code). Each such case is either honoured or refused here with a
:class:`~hf_sparse.nn.roles.UnsupportedFamilyError` (a ``ConfigError``) that names the family and the feature:
the rule is that no argument that changes the result is ever dropped silently.
"""

from __future__ import annotations

import weakref

from ..errors import quote
from ..nn.roles import UnsupportedFamilyError, family_display_name, family_of, layer_lists, refuse
from .config import ATTENTION_NAME

__all__ = [
    "LAYER_INDEX_ATTR",
    "index_attention_layers",
    "layer_index_of",
    "begin_forward",
    "HONOURED_KWARGS",
    "IGNORED_KWARGS",
    "family_name",
    "check_attention_kwargs",
    "is_cross_attention",
    "check_model_supported",
    "check_layer_selection",
    "layer_selection_error",
]

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
    model_type = getattr(model_config, "model_type", None)
    if not model_type:
        return "this model"
    return family_display_name(_Configured(model_config)) if family_of(_Configured(model_config)) else model_type


def _where(module) -> str:
    return f"{family_name(getattr(module, 'config', None))} ({type(module).__name__})"


#: The feature named by the typed refusals (:class:`~hf_sparse.nn.roles.UnsupportedFamilyError`) of this module.
FEATURE = f"sparse attention (attn_implementation={ATTENTION_NAME!r})"


def _refuse(model_config, reason: str) -> UnsupportedFamilyError:
    return UnsupportedFamilyError(family_name(model_config), FEATURE, reason)


def check_attention_kwargs(module, kwargs: dict) -> None:
    """Raise when the attention call passes an argument that changes the result and that the implementation does
    not honour (e.g. ``sinks``); ``None`` values and the arguments in :data:`IGNORED_KWARGS` are fine.

    Raises:
        UnsupportedFamilyError: names the family, the argument and what to use instead.
    """
    for name, value in kwargs.items():
        if value is None or name in HONOURED_KWARGS or name in IGNORED_KWARGS:
            continue
        what = _KNOWN_UNSUPPORTED.get(name, f"the attention argument {quote(name)}")
        raise _refuse(
            getattr(module, "config", None),
            f"{_where(module)} passes {what} (argument {quote(name)}), which the sparse attention implementation "
            "does not support yet and will not drop silently; use attn_implementation='eager' or 'sdpa' for this "
            "model.",
        )


def is_cross_attention(module, q_length: int, kv_length: int, causal: bool) -> bool:
    """Whether this attention call is cross-attention (decoder queries over encoder keys).

    The pattern is a pattern over positions of one sequence, so cross-attention runs as full attention: the module
    says so (``is_cross_attention``, or a decoder module that is not causal, as BART's and T5's ``encoder_attn`` /
    ``EncDecAttention``, or a ``...CrossAttention`` class), or the call is bidirectional with as many queries as keys
    differing (an encoder's self-attention always has as many). A causal module (``is_causal=True``: the
    self-attention of a decoder) never is.
    """
    flag = getattr(module, "is_cross_attention", None)
    if isinstance(flag, bool):
        return flag
    if "CrossAttention" in type(module).__name__:
        return True
    if getattr(module, "is_causal", None) is True:
        # A causal module is a decoder's self-attention, also when one query meets a longer cache under a mask the
        # model composed (its own sliding window): that mask is not marked causal, but the module is.
        return False
    if getattr(module, "is_decoder", False) is True and getattr(module, "is_causal", None) is False:
        return True
    return not causal and q_length != kv_length


def check_model_supported(model) -> None:
    """Raise when the model computes attention in its own code, so that ``attn_implementation="hf_sparse"`` would
    never run (DeBERTa-v2's disentangled attention).

    transformers decides this by reading the modeling file (``_can_set_attn_implementation``); after switching, the
    model's config also says whether the switch took.

    Raises:
        UnsupportedFamilyError: names the family.
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
    raise _refuse(
        model.config,
        f"{family} ({type(model).__name__}) computes its {feature} in its own code, not through transformers' "
        "AttentionInterface, so attn_implementation='hf_sparse' would never run and the model would silently keep "
        "full attention.",
    )


#: Instance attribute holding the layer index given to an attention module that has no ``layer_idx`` of its own
#: (DistilBERT), so ``layers=`` / ``layer_windows`` can select its layers.
LAYER_INDEX_ATTR = "hf_sparse_layer_idx"

_SELECTION = "sparse attention layer selection (SparseAttentionConfig.layers / layer_windows)"


def layer_selection_error(model_config, where: str) -> UnsupportedFamilyError:
    """The typed refusal of a layer selection on a family whose layers cannot be told apart: ALBERT runs one shared
    attention module as every layer; other modules without a layer index outside a forward pass of their model."""
    entry = family_of(_Configured(model_config))
    if entry is not None and entry.shared_layers:
        return refuse(
            _Configured(model_config),
            _SELECTION,
            f"{entry.family} shares one attention module ({where}) across all its layers, so one layer cannot use "
            "another pattern than the rest; leave layers and layer_windows empty to use the pattern in every layer, "
            "or use attn_implementation='eager' or 'sdpa'.",
        )
    family = family_name(model_config)
    return UnsupportedFamilyError(
        family,
        _SELECTION,
        f"{family}'s attention modules ({where}) carry no layer index, and none could be given from the model's layer "
        "list, so SparseAttentionConfig(layers=...) / layer_windows cannot select layers (the pattern would apply to "
        "every layer); leave layers and layer_windows empty to use the pattern in every layer, or use "
        "attn_implementation='eager' or 'sdpa'.",
    )


class _Configured:
    """A stand-in with only ``.config``, for the role table's lookups from a module's config."""

    def __init__(self, config):
        self.config = config


def _attention_paths(entry) -> set[str]:
    """Paths (relative to one layer) of the self-attention modules: the parents of the q/k/v/qkv projections."""
    paths = set()
    for role in ("attention.q", "attention.qkv"):
        pattern = entry.roles.get(role)
        if pattern and "\\." in pattern:
            paths.add(pattern.rsplit("\\.", 1)[0].replace("\\.", "."))
    return paths


def index_attention_layers(model) -> int:
    """Give each self-attention module without a ``layer_idx`` the index of its layer (an instance attribute,
    :data:`LAYER_INDEX_ATTR`), from the model's layer list in the module-role table; returns how many got one.

    Raises:
        UnsupportedFamilyError: the family's layers share one attention module (ALBERT).
    """
    entry = family_of(model)
    if entry is None:
        return 0
    if entry.shared_layers:
        raise layer_selection_error(model.config, type(model).__name__)
    paths = _attention_paths(entry)
    count = 0
    for _, layers in layer_lists(model, entry):
        for i, layer in enumerate(layers):
            for name, module in layer.named_modules():
                if name in paths and getattr(module, "layer_idx", None) is None:
                    setattr(module, LAYER_INDEX_ATTR, i)
                    count += 1
    return count


# Layer indices of the attention modules called so far in the current forward pass of each model config (by id),
# in call order; reset by the mask function, which every forward pass of the model calls before its first layer.
_CALLS: dict[int, list] = {}


def begin_forward(model_config) -> None:
    """Mark the start of a forward pass of the model with this config (called by the ``hf_sparse`` mask
    function, before any layer runs)."""
    if model_config is None:
        return
    key = id(model_config)
    if key not in _CALLS:
        weakref.finalize(model_config, _CALLS.pop, key, None)
    _CALLS[key] = []


def layer_index_of(module, model_config) -> int | None:
    """The layer index of an attention module: its ``layer_idx``, the index :func:`index_attention_layers` gave it,
    or, for a model loaded from a checkpoint (where nothing gave one), its place in the order of the modules the
    current forward pass calls (a model's layers run in order, so the k-th distinct attention module of the first
    forward pass is layer k). ``None`` when it cannot be known.

    Raises:
        UnsupportedFamilyError: the family's layers share one attention module (ALBERT).
    """
    idx = getattr(module, "layer_idx", None)
    if idx is None:
        idx = getattr(module, LAYER_INDEX_ATTR, None)
    entry = family_of(_Configured(model_config))
    if entry is not None and entry.shared_layers:
        raise layer_selection_error(model_config, type(module).__name__)
    calls = _CALLS.get(id(model_config))
    if calls is None:
        return idx
    if idx is None:
        # Only when every earlier call of this forward pass was the layer of its position: the order is the model's.
        depth = getattr(model_config, "num_hidden_layers", None)
        if calls != list(range(len(calls))) or (isinstance(depth, int) and len(calls) >= depth):
            return None
        idx = len(calls)
        setattr(module, LAYER_INDEX_ATTR, idx)
    calls.append(idx)
    return idx


def check_layer_selection(model, config) -> None:
    """Index the attention modules of a model without layer indices (DistilBERT) when ``config`` selects layers
    (``layers`` / ``layer_windows``), and raise when that is impossible (ALBERT's shared layers, or no module
    found to index)."""
    if not (config.layers or config.layer_windows):
        return
    if any(getattr(m, "layer_idx", None) is not None for m in model.modules()):
        return
    if not index_attention_layers(model):
        raise layer_selection_error(model.config, type(model).__name__)
