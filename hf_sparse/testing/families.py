"""Tiny random-config models of every mainstream transformers family, one table entry each.

The family × feature test matrix (``tests/test_family_matrix.py``) and the per-feature tests build their models
here, so a new family is one entry: its config class, the model class with the task head users fine-tune, the
tiny sizes, and its kind (``"encoder"``, ``"decoder"``, ``"seq2seq"`` or ``"recommender"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, quote

__all__ = [
    "FamilySpec",
    "FAMILIES",
    "FEATURES",
    "FEATURE_DESCRIPTIONS",
    "REFUSED",
    "SUPPORT",
    "tiny_model",
    "tiny_inputs",
    "logits_of",
    "reload_in_process",
    "support_table_markdown",
    "check_reload_in_fresh_process",
]


@dataclass(frozen=True)
class FamilySpec:
    """One family: transformers' config and model class names, tiny sizes, and its kind."""

    name: str
    config_class: str
    model_class: str
    # "encoder" (sequence classification), "decoder" (causal LM), "seq2seq" (conditional generation) or
    # "recommender" (next-item scores)
    kind: str
    sizes: dict[str, Any] = field(default_factory=dict)


_ENC = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    num_labels=2,
)
# special token ids inside the tiny vocabulary (the defaults of some families point past it)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
# decoders: 4 query heads sharing 2 key/value heads (grouped-query attention), head_dim 16, a gated MLP
_DEC = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)

FAMILIES: dict[str, FamilySpec] = {
    s.name: s
    for s in (
        FamilySpec("bert", "BertConfig", "BertForSequenceClassification", "encoder", _ENC),
        FamilySpec(
            "roberta", "RobertaConfig", "RobertaForSequenceClassification", "encoder", {**_ENC, "pad_token_id": 1}
        ),
        FamilySpec(
            "xlm-roberta",
            "XLMRobertaConfig",
            "XLMRobertaForSequenceClassification",
            "encoder",
            {**_ENC, "pad_token_id": 1},
        ),
        FamilySpec(
            "electra", "ElectraConfig", "ElectraForSequenceClassification", "encoder", {**_ENC, "embedding_size": 32}
        ),
        FamilySpec(
            "distilbert",
            "DistilBertConfig",
            "DistilBertForSequenceClassification",
            "encoder",
            dict(
                vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, num_labels=2
            ),
        ),
        FamilySpec(
            "albert", "AlbertConfig", "AlbertForSequenceClassification", "encoder", {**_ENC, "embedding_size": 16}
        ),
        FamilySpec(
            "deberta-v2",
            "DebertaV2Config",
            "DebertaV2ForSequenceClassification",
            "encoder",
            {**_ENC, "relative_attention": True, "position_buckets": 8, "pos_att_type": ["p2c", "c2p"]},
        ),
        FamilySpec(
            "modernbert",
            "ModernBertConfig",
            "ModernBertForSequenceClassification",
            "encoder",
            {**_ENC, "global_attn_every_n_layers": 2, "local_attention": 8, **_IDS},
        ),
        FamilySpec(
            "gpt2",
            "GPT2Config",
            "GPT2LMHeadModel",
            "decoder",
            dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=128, **_IDS),
        ),
        FamilySpec("llama", "LlamaConfig", "LlamaForCausalLM", "decoder", _DEC),
        FamilySpec("mistral", "MistralConfig", "MistralForCausalLM", "decoder", _DEC),
        FamilySpec("qwen2", "Qwen2Config", "Qwen2ForCausalLM", "decoder", _DEC),
        FamilySpec("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "decoder", {**_DEC, "head_dim": 16}),
        FamilySpec("gemma2", "Gemma2Config", "Gemma2ForCausalLM", "decoder", {**_DEC, "head_dim": 16}),
        FamilySpec("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", "decoder", {**_DEC, "head_dim": 16}),
        FamilySpec("phi3", "Phi3Config", "Phi3ForCausalLM", "decoder", {**_DEC, **_IDS}),
        FamilySpec(
            "t5",
            "T5Config",
            "T5ForConditionalGeneration",
            "seq2seq",
            dict(
                vocab_size=128,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                decoder_start_token_id=0,
                pad_token_id=0,
            ),
        ),
        FamilySpec(
            "bart",
            "BartConfig",
            "BartForConditionalGeneration",
            "seq2seq",
            dict(
                vocab_size=128,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=64,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                decoder_start_token_id=2,
                forced_eos_token_id=None,
            ),
        ),
        FamilySpec(
            "sasrec",
            "hf_sparse.recsys.config:SASRecConfig",
            "hf_sparse.recsys.modeling:SASRecForNextItem",
            "recommender",
            dict(
                num_items=127,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            ),
        ),
    )
}


def _class(path: str):
    """A class named by transformers' top-level name, or by ``module:Class`` (the recommender)."""
    import importlib

    import transformers

    if ":" in path:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)
    return getattr(transformers, path)


def _spec(family: str) -> FamilySpec:
    if family not in FAMILIES:
        raise ConfigError(f"tiny_model: unknown family {quote(family)}; known: {sorted(FAMILIES)}.")
    return FAMILIES[family]


def tiny_model(family: str, seed: int = 0, *, dropout: bool = True, **overrides) -> torch.nn.Module:
    """A randomly initialised (seeded) tiny model of ``family`` (a key of :data:`FAMILIES`) in eval mode, with the
    family's usual task head; ``overrides`` change config fields. ``dropout=False`` sets every dropout probability of
    the config to 0 (so training-mode forwards are deterministic)."""
    spec = _spec(family)
    config = _class(spec.config_class)(**{**spec.sizes, **overrides})
    if not dropout:
        for key, value in config.to_dict().items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
                setattr(config, key, 0.0)
    torch.manual_seed(seed)
    return _class(spec.model_class)(config).eval()


def logits_of(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """``model(**inputs).logits`` without gradients."""
    with torch.no_grad():
        return model(**inputs).logits


def reload_in_process(model: torch.nn.Module, folder) -> torch.nn.Module:
    """``model`` saved to ``folder`` and loaded back with its class's ``from_pretrained``, in eval mode."""
    model.save_pretrained(folder)
    return type(model).from_pretrained(folder).eval()


def tiny_inputs(family: str, batch: int = 2, seq_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded model inputs for :func:`tiny_model` (token ids avoid the special ids 0-3; seq2seq models also get
    ``decoder_input_ids``)."""
    spec = _spec(family)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 128, (batch, seq_len), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if spec.kind == "seq2seq":
        out["decoder_input_ids"] = torch.randint(4, 128, (batch, max(2, seq_len // 2)), generator=g)
    return out


#: The features of the family × feature matrix (``tests/test_family_matrix.py``), in the README's column order.
FEATURES: tuple[str, ...] = (
    "pruning",
    "callback",
    "structured",
    "student",
    "sparsify",
    "attention",
    "qat",
    "distillation",
    "lowrank",
    "lora",
    "generate",
)

#: What each feature means in the matrix (the README's legend).
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "pruning": "one-shot pruning: unstructured (magnitude, Wanda), 2:4, 4×4 blocks",
    "callback": "PruningCallback in the stock Trainer",
    "structured": "attention heads (whole key/value groups) + FFN neurons removed physically, reload",
    "student": "student_from_teacher (half depth), reload",
    "sparsify": "sparsify_ + save + fresh-process from_pretrained",
    "attention": "windowed attention (hf_sparse implementation) vs eager, cached generation",
    "qat": "QAT prepare + convert + reload",
    "distillation": "logit distillation (Distiller)",
    "lowrank": "low-rank factorisation + reload",
    "lora": "peft LoRA on sparse layers, pattern-keeping merge",
    "generate": "generate() of a sparsified model, with and without cache",
}

#: Cells that do not apply (generation needs a decoder).
_NOT_APPLICABLE = {(f, "generate") for f, s in FAMILIES.items() if s.kind in ("encoder", "recommender")}

#: Cells that raise :class:`~hf_sparse.nn.roles.UnsupportedFamilyError` on purpose, with the reason.
REFUSED: dict[tuple[str, str], str] = {
    ("deberta-v2", "attention"): "DeBERTa-v2 computes its disentangled (content-to-position) attention in its own "
    "code, not through transformers' attention interface, so a registered implementation would never run",
    ("sasrec", "attention"): "the recommender computes its causal attention in its own code",
}

#: family -> feature -> ``"yes"`` (numbers checked), ``"refused"`` (typed error) or ``"n/a"``.
SUPPORT: dict[str, dict[str, str]] = {
    family: {
        feature: "n/a"
        if (family, feature) in _NOT_APPLICABLE
        else "refused"
        if (family, feature) in REFUSED
        else "yes"
        for feature in FEATURES
    }
    for family in FAMILIES
}

_MARK = {"yes": "✓", "refused": "refused", "n/a": "—"}


def support_table_markdown() -> str:
    """The family × feature matrix as a Markdown table (the README embeds it verbatim)."""
    lines = ["| family | " + " | ".join(FEATURES) + " |", "|---" * (len(FEATURES) + 1) + "|"]
    for family in FAMILIES:
        lines.append(f"| {family} | " + " | ".join(_MARK[SUPPORT[family][f]] for f in FEATURES) + " |")
    if REFUSED:
        lines += ["", "Refused, and why:", ""]
        lines += [f"- {family} / {feature}: {why}" for (family, feature), why in REFUSED.items()]
    return "\n".join(lines)


def check_reload_in_fresh_process(cases, *, seed: int = 3) -> None:
    """Save each ``(family, model, folder)`` of ``cases``, then reload every checkpoint with ``from_pretrained`` (of
    the family's model class, after ``import hf_sparse``) in one fresh Python process and assert it computes the
    logits the saved model computed on seeded inputs."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    entries = []
    for family, model, folder in cases:
        folder = Path(folder)
        inputs = tiny_inputs(family, seed=seed)
        with torch.no_grad():
            logits = model(**inputs).logits
        model.save_pretrained(folder)
        save_file({**inputs, "logits": logits.contiguous()}, str(folder / "case.safetensors"))
        entries.append((family, _spec(family).model_class, str(folder)))
    script = (
        "import torch, hf_sparse\n"
        "from safetensors.torch import load_file\n"
        "from hf_sparse.testing.families import _class\n"
        f"for family, cls, folder in {entries!r}:\n"
        "    m = _class(cls).from_pretrained(folder).eval()\n"
        "    case = load_file(folder + '/case.safetensors')\n"
        "    want = case.pop('logits')\n"
        "    with torch.no_grad():\n"
        "        torch.testing.assert_close(m(**case).logits, want, msg=lambda s: family + ': ' + s)\n"
        "print('reloaded ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "reloaded ok" in done.stdout, done.stderr[-3000:]
