"""``apply_sparse_attention_``: switch a transformers model to the ``hf_sparse`` attention implementation."""

from __future__ import annotations

import weakref

from torch import nn

from ..errors import ConfigError
from .config import SparseAttentionConfig

__all__ = ["apply_sparse_attention_"]

# Models whose input ids are recorded (token-id global tokens), with the hook's handle.
_HOOKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def apply_sparse_attention_(model: nn.Module, config: SparseAttentionConfig) -> dict:
    """Record ``config`` in ``model.config`` (so ``save_pretrained`` writes it to ``config.json``) and switch the
    model to ``attn_implementation="hf_sparse"``, in place.

    A saved model loads back with ``AutoModel...from_pretrained(path, attn_implementation="hf_sparse")``.

    Returns:
        ``{"layers": [...], "pattern": ...}``: the attention layers that use the pattern, and its description.

    Raises:
        ConfigError: ``config`` is not a :class:`SparseAttentionConfig`, or the model has no transformers config.
    """
    from ..integrations.attention import ATTENTION_NAME, CONFIG_KEY, record_input_ids

    if not isinstance(config, SparseAttentionConfig):
        raise ConfigError(f"apply_sparse_attention_ needs a SparseAttentionConfig, got {type(config).__name__}.")
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model, "set_attn_implementation"):
        raise ConfigError("apply_sparse_attention_ needs a transformers PreTrainedModel (with .config).")
    setattr(model_config, CONFIG_KEY, config.to_dict())
    model.set_attn_implementation(ATTENTION_NAME)
    if config.global_token_ids and model not in _HOOKED:
        _HOOKED[model] = record_input_ids(model)
    layers = sorted(
        {
            m.layer_idx
            for m in model.modules()
            if getattr(m, "layer_idx", None) is not None and hasattr(m, "config") and config.applies_to(m.layer_idx)
        }
    )
    return {"layers": layers, "pattern": repr(config.pattern_for(layers[0] if layers else None))}
