"""The module-role table: what each module of a transformers model family *is* (task head, embedding, attention
projection, MLP projection) and where its layers live, one entry per family.

Every transform that has to know a model's layout reads it here instead of keeping its own name list: the default
exclusions of pruning and ``sparsify_`` (task heads and embeddings), structured pruning (which Linear layers hold a
head's rows, which hold an FFN neuron), students built from a teacher (the layer lists), and the messages that
refuse a family. Supporting a new family is one :class:`FamilyRoles` entry in :data:`FAMILY_ROLES`.

Paths of layer lists are full-name regexes (``(?:.+\\.)?encoder\\.layer``); role paths are regexes relative to one
layer of such a list (``attention\\.self\\.query``). Roles:

* ``attention.q`` / ``attention.k`` / ``attention.v`` / ``attention.o``: self-attention projections;
  ``attention.qkv``: a fused query/key/value projection (ModernBERT ``Wqkv``, Phi-3 ``qkv_proj``, GPT-2 ``c_attn``).
* ``cross_attention.q`` / ``.k`` / ``.v`` / ``.o``: a seq2seq decoder's attention over the encoder output.
* ``mlp.up`` / ``mlp.gate`` / ``mlp.down``: the FFN (``mlp.gate`` only where it is gated); ``mlp.gate_up``: a fused
  gate-and-up projection (Phi-3 ``gate_up_proj``, ModernBERT ``Wi``).
* ``task_head`` and ``embedding`` (name components anywhere in the model), ``other`` for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError, quote

__all__ = [
    "UnsupportedFamilyError",
    "FamilyRoles",
    "FAMILY_ROLES",
    "COMMON_TASK_HEADS",
    "GENERIC_TASK_HEADS",
    "GENERIC_EMBEDDINGS",
    "family_of",
    "family_display_name",
    "MODEL_TYPE_NAMES",
    "roles_for",
    "default_exclude",
    "module_role",
    "layer_lists",
    "refuse",
]


class UnsupportedFamilyError(ConfigError):
    """A feature cannot honour a model family (or a layout of it); the message names both."""

    def __init__(self, family: str, feature: str, reason: str = "") -> None:
        self.family = family
        self.feature = feature
        text = f"{feature} does not support the {family} model family"
        super().__init__(f"{text}: {reason}" if reason else f"{text}.")


#: Task-head name components of transformers' task models in general (the configs' default exclusions list them).
COMMON_TASK_HEADS: tuple[str, ...] = (
    "classifier",
    "pre_classifier",
    "pooler",
    "lm_head",
    "score",
    "qa_outputs",
    "cls",
)
#: Task-head and embedding name components used for families without a table entry.
GENERIC_TASK_HEADS: tuple[str, ...] = (*COMMON_TASK_HEADS, "classification_head")
GENERIC_EMBEDDINGS: tuple[str, ...] = (
    "embeddings",
    "embed_tokens",
    "embed_positions",
    "shared",
    "wte",
    "wpe",
    "rel_embeddings",
    "relative_attention_bias",
)

_BERT_ATTENTION = {
    "attention.q": r"attention\.self\.query",
    "attention.k": r"attention\.self\.key",
    "attention.v": r"attention\.self\.value",
    "attention.o": r"attention\.output\.dense",
    "mlp.up": r"intermediate\.dense",
    "mlp.down": r"output\.dense",
}
_LLAMA = {
    "attention.q": r"self_attn\.q_proj",
    "attention.k": r"self_attn\.k_proj",
    "attention.v": r"self_attn\.v_proj",
    "attention.o": r"self_attn\.o_proj",
    "mlp.gate": r"mlp\.gate_proj",
    "mlp.up": r"mlp\.up_proj",
    "mlp.down": r"mlp\.down_proj",
}
_DECODER_HEADS = ("lm_head", "score", "qa_outputs", "classifier")


@dataclass(frozen=True)
class FamilyRoles:
    """The layout of one model family.

    Args:
        family: the display name used in messages (``"Llama"``).
        model_types: the ``config.model_type`` values the entry covers.
        kind: ``"encoder"``, ``"decoder"`` or ``"seq2seq"``.
        layers: full-name regexes of the ``nn.ModuleList`` (s) holding the transformer layers.
        roles: role -> regex of a module path relative to one layer (see the module docstring).
        task_heads: name components of task heads (left dense by default).
        embeddings: name components of embedding tables and projections (left dense by default).
        heads_attr / kv_heads_attr: the config attributes holding the number of (key/value) attention heads.
        shared_layers: the layers share weights (ALBERT): one module runs as every layer.
        conv1d: the projections are transformers ``Conv1D`` modules (weight stored ``(in, out)``), not ``nn.Linear``.
        ffn_attr: the config attribute holding the FFN width (``intermediate_size``); a seq2seq family's
            ``encoder_`` attribute has a ``decoder_`` twin.
        head_bias: the attribute of the first layer's attention holding a per-head table whose output the later
            layers reuse (T5 ``relative_attention_bias``): every layer of a stack must keep the same heads.
        attention_reads_config: the attention's forward reads head counts from ``self.config`` (Phi-3), so a
            layer with other counts needs its own view of the config.
    """

    family: str
    model_types: tuple[str, ...]
    kind: str
    layers: tuple[str, ...]
    roles: dict[str, str] = field(default_factory=dict)
    task_heads: tuple[str, ...] = GENERIC_TASK_HEADS
    embeddings: tuple[str, ...] = GENERIC_EMBEDDINGS
    heads_attr: str = "num_attention_heads"
    kv_heads_attr: str | None = None
    shared_layers: bool = False
    conv1d: bool = False
    ffn_attr: str = "intermediate_size"
    head_bias: str | None = None
    attention_reads_config: bool = False

    def role_of(self, relative: str) -> str:
        """The role of a module path relative to one layer (``"other"`` when none matches)."""
        for role, pattern in self.roles.items():
            if re.fullmatch(pattern, relative):
                return role
        return "other"


_ENCODER_HEADS = GENERIC_TASK_HEADS + ("generator_predictions", "generator_lm_head", "discriminator_predictions")

FAMILY_ROLES: tuple[FamilyRoles, ...] = (
    FamilyRoles(
        "BERT",
        ("bert", "roberta", "xlm-roberta", "camembert", "data2vec-text", "electra", "ernie", "xlm-roberta-xl"),
        "encoder",
        (r"(?:.+\.)?encoder\.layer",),
        _BERT_ATTENTION,
        task_heads=_ENCODER_HEADS,
    ),
    FamilyRoles(
        "DistilBERT",
        ("distilbert",),
        "encoder",
        (r"(?:.+\.)?transformer\.layer",),
        {
            "attention.q": r"attention\.q_lin",
            "attention.k": r"attention\.k_lin",
            "attention.v": r"attention\.v_lin",
            "attention.o": r"attention\.out_lin",
            "mlp.up": r"ffn\.lin1",
            "mlp.down": r"ffn\.lin2",
        },
        task_heads=GENERIC_TASK_HEADS + ("vocab_transform", "vocab_projector"),
        heads_attr="n_heads",
        ffn_attr="hidden_dim",
    ),
    FamilyRoles(
        "ALBERT",
        ("albert",),
        "encoder",
        (r"(?:.+\.)?encoder\.albert_layer_groups\.\d+\.albert_layers",),
        {
            "attention.q": r"attention\.query",
            "attention.k": r"attention\.key",
            "attention.v": r"attention\.value",
            "attention.o": r"attention\.dense",
            "mlp.up": r"ffn",
            "mlp.down": r"ffn_output",
        },
        task_heads=GENERIC_TASK_HEADS + ("predictions", "sop_classifier"),
        embeddings=GENERIC_EMBEDDINGS + ("embedding_hidden_mapping_in",),
        shared_layers=True,
    ),
    FamilyRoles(
        "DeBERTa-v2",
        ("deberta-v2", "deberta"),
        "encoder",
        (r"(?:.+\.)?encoder\.layer",),
        {
            "attention.q": r"attention\.self\.query_proj",
            "attention.k": r"attention\.self\.key_proj",
            "attention.v": r"attention\.self\.value_proj",
            "attention.pos_k": r"attention\.self\.pos_key_proj",
            "attention.pos_q": r"attention\.self\.pos_query_proj",
            "attention.o": r"attention\.output\.dense",
            "mlp.up": r"intermediate\.dense",
            "mlp.down": r"output\.dense",
        },
        task_heads=GENERIC_TASK_HEADS + ("lm_predictions", "mask_predictions"),
    ),
    FamilyRoles(
        "ModernBERT",
        ("modernbert",),
        "encoder",
        (r"(?:.+\.)?layers",),
        {
            "attention.qkv": r"attn\.Wqkv",
            "attention.o": r"attn\.Wo",
            "mlp.gate_up": r"mlp\.Wi",
            "mlp.down": r"mlp\.Wo",
        },
        task_heads=GENERIC_TASK_HEADS + ("head", "decoder"),
    ),
    FamilyRoles(
        "GPT-2",
        ("gpt2",),
        "decoder",
        (r"(?:.+\.)?h",),
        {
            "attention.qkv": r"attn\.c_attn",
            "attention.o": r"attn\.c_proj",
            "mlp.up": r"mlp\.c_fc",
            "mlp.down": r"mlp\.c_proj",
        },
        task_heads=_DECODER_HEADS,
        heads_attr="n_head",
        conv1d=True,
        ffn_attr="n_inner",
    ),
    FamilyRoles(
        "Llama",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite"),
        "decoder",
        (r"(?:.+\.)?layers",),
        _LLAMA,
        task_heads=_DECODER_HEADS,
        kv_heads_attr="num_key_value_heads",
    ),
    FamilyRoles(
        "Phi-3",
        ("phi3",),
        "decoder",
        (r"(?:.+\.)?layers",),
        {
            "attention.qkv": r"self_attn\.qkv_proj",
            "attention.o": r"self_attn\.o_proj",
            "mlp.gate_up": r"mlp\.gate_up_proj",
            "mlp.down": r"mlp\.down_proj",
        },
        task_heads=_DECODER_HEADS,
        kv_heads_attr="num_key_value_heads",
        attention_reads_config=True,
    ),
    FamilyRoles(
        "T5",
        ("t5", "mt5"),
        "seq2seq",
        (r"(?:.+\.)?encoder\.block", r"(?:.+\.)?decoder\.block"),
        {
            "attention.q": r"layer\.0\.SelfAttention\.q",
            "attention.k": r"layer\.0\.SelfAttention\.k",
            "attention.v": r"layer\.0\.SelfAttention\.v",
            "attention.o": r"layer\.0\.SelfAttention\.o",
            "cross_attention.q": r"layer\.1\.EncDecAttention\.q",
            "cross_attention.k": r"layer\.1\.EncDecAttention\.k",
            "cross_attention.v": r"layer\.1\.EncDecAttention\.v",
            "cross_attention.o": r"layer\.1\.EncDecAttention\.o",
            "mlp.up": r"layer\.\d+\.DenseReluDense\.(?:wi|wi_1)",
            "mlp.gate": r"layer\.\d+\.DenseReluDense\.wi_0",
            "mlp.down": r"layer\.\d+\.DenseReluDense\.wo",
        },
        task_heads=_DECODER_HEADS + ("classification_head",),
        heads_attr="num_heads",
        ffn_attr="d_ff",
        head_bias="relative_attention_bias",
    ),
    FamilyRoles(
        "BART",
        ("bart", "mbart"),
        "seq2seq",
        (r"(?:.+\.)?encoder\.layers", r"(?:.+\.)?decoder\.layers"),
        {
            "attention.q": r"self_attn\.q_proj",
            "attention.k": r"self_attn\.k_proj",
            "attention.v": r"self_attn\.v_proj",
            "attention.o": r"self_attn\.out_proj",
            "cross_attention.q": r"encoder_attn\.q_proj",
            "cross_attention.k": r"encoder_attn\.k_proj",
            "cross_attention.v": r"encoder_attn\.v_proj",
            "cross_attention.o": r"encoder_attn\.out_proj",
            "mlp.up": r"fc1",
            "mlp.down": r"fc2",
        },
        task_heads=_DECODER_HEADS + ("classification_head",),
        heads_attr="encoder_attention_heads",
        ffn_attr="encoder_ffn_dim",
    ),
    FamilyRoles(
        "SASRec recommender",
        ("hf_sparse_sasrec",),
        "encoder",
        (r"(?:.+\.)?layers",),
        {
            "attention.q": r"attention\.query",
            "attention.k": r"attention\.key",
            "attention.v": r"attention\.value",
            "attention.o": r"attention\.output",
            "mlp.up": r"feed_forward\.dense_in",
            "mlp.down": r"feed_forward\.dense_out",
        },
        task_heads=("score", "output_bias"),
        embeddings=("item_embeddings", "embeddings", "position_embeddings"),
    ),
)

_BY_TYPE: dict[str, FamilyRoles] = {t: entry for entry in FAMILY_ROLES for t in entry.model_types}


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", "") or "")


def family_of(model: nn.Module) -> FamilyRoles | None:
    """The table entry of ``model``'s family (by ``config.model_type``), or None when the family has none."""
    return _BY_TYPE.get(_model_type(model))


#: Display names of model types an entry covers under another family's name (a Gemma 2 model has Llama's layout).
MODEL_TYPE_NAMES: dict[str, str] = {
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-RoBERTa",
    "electra": "ELECTRA",
    "camembert": "CamemBERT",
    "deberta": "DeBERTa",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "gemma2": "Gemma2",
    "gemma3_text": "Gemma3",
    "mt5": "mT5",
    "mbart": "mBART",
}


def family_display_name(model: nn.Module) -> str:
    """A name for messages: the model type's own name (``Gemma2``), the entry's display name (with the model type
    when they differ), the model type, or the class name."""
    entry = family_of(model)
    model_type = _model_type(model)
    if model_type in MODEL_TYPE_NAMES:
        return MODEL_TYPE_NAMES[model_type]
    if entry is not None:
        return entry.family if model_type.lower() == entry.family.lower() else f"{entry.family} ({model_type})"
    return quote(model_type) if model_type else type(model).__name__


def refuse(model: nn.Module, feature: str, reason: str = "") -> UnsupportedFamilyError:
    """The typed error for ``feature`` on ``model``'s family (raise it)."""
    return UnsupportedFamilyError(family_display_name(model), feature, reason)


def roles_for(model: nn.Module, feature: str) -> FamilyRoles:
    """The table entry of ``model``'s family.

    Raises:
        UnsupportedFamilyError: the family has no entry (``feature`` is named in the message).
    """
    entry = family_of(model)
    if entry is None:
        known = sorted(_BY_TYPE)
        raise refuse(model, feature, f"its layout is not in the module-role table (known model types: {known}).")
    return entry


def default_exclude(model: nn.Module) -> tuple[str, ...]:
    """Name components left dense by default in ``model``: its family's task heads and embeddings (the generic
    lists for a family without an entry)."""
    entry = family_of(model)
    if entry is None:
        return GENERIC_TASK_HEADS + GENERIC_EMBEDDINGS
    return tuple(dict.fromkeys(entry.task_heads + entry.embeddings))


def layer_lists(model: nn.Module, entry: FamilyRoles | None = None) -> list[tuple[str, nn.ModuleList]]:
    """The ``nn.ModuleList`` (s) of transformer layers of ``model``, with their qualified names, in model order
    (encoder before decoder)."""
    entry = entry or family_of(model)
    if entry is None:
        return []
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(re.fullmatch(p, name) for p in entry.layers):
            found.append((name, module))
    return found


def module_role(model: nn.Module, name: str) -> str:
    """The role of the module called ``name`` in ``model``: ``"task_head"``, ``"embedding"``, one of the layer
    roles (``"attention.q"``, ``"mlp.down"`` ...) or ``"other"``."""
    entry = family_of(model)
    parts = name.split(".")
    heads = entry.task_heads if entry else GENERIC_TASK_HEADS
    embeddings = entry.embeddings if entry else GENERIC_EMBEDDINGS
    if any(p in heads for p in parts):
        return "task_head"
    if any(p in embeddings for p in parts):
        return "embedding"
    if entry is None:
        return "other"
    for list_name, _ in layer_lists(model, entry):
        prefix = f"{list_name}."
        if name.startswith(prefix):
            index, _, relative = name[len(prefix) :].partition(".")
            if index.isdigit() and relative:
                return entry.role_of(relative)
    return "other"
