"""``apply_sparse_attention_``: switch a transformers model to the ``hf_sparse`` attention implementation (which
:mod:`hf_sparse.integrations.attention` registers with transformers), and record the token ids its forward passes
see (for token-id global tokens)."""

from __future__ import annotations

import logging
import warnings
import weakref

import torch
from torch import nn
from transformers import PreTrainedConfig

from ..errors import ConfigError
from .config import ATTENTION_NAME, CONFIG_KEY, SparseAttentionConfig
from .families import LAYER_INDEX_ATTR, check_layer_selection, check_model_supported, family_name

__all__ = [
    "apply_sparse_attention_",
    "check_sparse_attention",
    "record_input_ids",
    "recorded_input_ids",
    "remove_sparse_attention_",
    "warn_pattern_not_running",
]

logger = logging.getLogger(__name__)

# Models whose input ids are recorded (token-id global tokens), with the hook's handle.
_HOOKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# input_ids of the latest forward pass per model config (token-id global tokens), set by a forward pre-hook.
_TOKENS: dict[int, torch.Tensor] = {}


def record_input_ids(model: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Record each forward pass's token ids (for token-id global tokens): a forward pre-hook on the model's input
    embedding table, which every call path (the task model, its base model) goes through."""
    config = model.config
    key = id(config)
    weakref.finalize(config, _TOKENS.pop, key, None)

    def _hook(mod, args):
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
            _TOKENS[key] = args[0].detach()

    return model.get_input_embeddings().register_forward_pre_hook(_hook)


def recorded_input_ids(model_config) -> torch.Tensor | None:
    """The token ids of the latest forward pass of the model with this config, if :func:`record_input_ids` records
    them."""
    return _TOKENS.get(id(model_config))


def _model_configs(model: nn.Module) -> list:
    """The model's config and every other config object its modules hold (T5's encoder and decoder stacks hold
    copies of it, and their attention modules read those)."""
    seen = {id(model.config): model.config}
    for m in model.modules():
        c = getattr(m, "config", None)
        if isinstance(c, PreTrainedConfig) and id(c) not in seen:
            seen[id(c)] = c
    return list(seen.values())


def apply_sparse_attention_(model: nn.Module, config: SparseAttentionConfig) -> dict:
    """Record ``config`` in ``model.config`` (so ``save_pretrained`` writes it to ``config.json``) and switch the
    model to ``attn_implementation="hf_sparse"``, in place.

    ``config.json`` also records ``attn_implementation: "hf_sparse"`` (a key transformers' configs read when they
    load), so ``AutoModel...from_pretrained(path)`` loads the model back with the pattern; passing another
    ``attn_implementation`` explicitly loads it with that implementation, without the pattern.

    Families the implementation cannot run correctly are refused here (see :mod:`hf_sparse.attention.families`).

    Returns:
        ``{"layers": [...], "pattern": ...}``: the attention layers that use the pattern, and its description.

    Raises:
        ConfigError: ``config`` is not a :class:`SparseAttentionConfig`, the model has no transformers config, the
            model computes attention in its own code (DeBERTa-v2), ``layers`` / ``layer_windows`` select layers of
            a model whose layers share one attention module (ALBERT: an ``UnsupportedFamilyError``), or token-id
            global tokens are asked of an encoder-decoder model.

    Attention modules without a layer index of their own (DistilBERT) get the index of their layer in the model's
    layer list (module-role table) when ``layers`` / ``layer_windows`` select layers; a model loaded from a
    checkpoint that records such a selection indexes them on its first forward pass, from the order its layers
    run in.
    """
    if not isinstance(config, SparseAttentionConfig):
        raise ConfigError(f"apply_sparse_attention_ needs a SparseAttentionConfig, got {type(config).__name__}.")
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model, "set_attn_implementation"):
        raise ConfigError("apply_sparse_attention_ needs a transformers PreTrainedModel (with .config).")
    check_model_supported(model)
    check_layer_selection(model, config)
    if config.global_token_ids and getattr(model_config, "is_encoder_decoder", False):
        raise ConfigError(
            f"hf_sparse attention: token-id global tokens (global_token_ids) are not supported for "
            f"{family_name(model_config)}, an encoder-decoder model (encoder and decoder share the input "
            "embedding, so the token ids of the sequence each layer sees are not known); use global_positions."
        )
    model.set_attn_implementation(ATTENTION_NAME)
    if getattr(model_config, "_attn_implementation", ATTENTION_NAME) != ATTENTION_NAME:
        raise ConfigError(
            f"hf_sparse attention: {family_name(model_config)} ({type(model).__name__}) did not switch to "
            f"attn_implementation={ATTENTION_NAME!r} (it stays {model_config._attn_implementation!r}), so the pattern "
            "would never run; sparse attention does not support this model."
        )
    for c in _model_configs(model):
        setattr(c, CONFIG_KEY, config.to_dict())
    # Read back by transformers' config when the checkpoint loads: the model loads with our implementation, so a
    # saved pattern is never silently replaced by full attention.
    model_config.attn_implementation = ATTENTION_NAME
    if config.global_token_ids and model not in _HOOKED:
        _HOOKED[model] = record_input_ids(model)
    indices = {
        next((i for i in (getattr(m, "layer_idx", None), getattr(m, LAYER_INDEX_ATTR, None)) if i is not None), None)
        for m in model.modules()
        if hasattr(m, "config")
    }
    layers = sorted(i for i in indices if i is not None and config.applies_to(i))
    return {"layers": layers, "pattern": repr(config.pattern_for(layers[0] if layers else None))}


def remove_sparse_attention_(model: nn.Module, attn_implementation: str = "sdpa") -> nn.Module:
    """Make ``model`` dense again, in place: the pattern record is removed from its config (and from the configs its
    modules hold) and it runs ``attn_implementation``. A model that keeps the record while running another
    implementation is warned about (see :func:`warn_pattern_not_running`); this is the way to mean it."""
    for c in _model_configs(model):
        if hasattr(c, CONFIG_KEY):
            delattr(c, CONFIG_KEY)
        if getattr(c, "attn_implementation", None) == ATTENTION_NAME:
            delattr(c, "attn_implementation")
    model.set_attn_implementation(attn_implementation)
    return model


def check_sparse_attention(model: nn.Module) -> bool:
    """Whether a model whose config records a sparse attention pattern actually runs it.

    A checkpoint saved with a pattern loads with ``attn_implementation="hf_sparse"`` by itself (its ``config.json``
    says so), but one saved by an earlier version, or loaded with another ``attn_implementation`` passed
    explicitly, runs full attention. This warns loudly then (``warnings.warn`` and the log), naming what is lost
    and how to get it back. (The same warning comes by itself at the first forward pass of such a model: see
    :func:`warn_pattern_not_running`.)

    Returns:
        ``False`` (after warning) when the config records a pattern the model does not run; ``True`` otherwise.
    """
    model_config = getattr(model, "config", None)
    if getattr(model_config, CONFIG_KEY, None) is None or model_config._attn_implementation == ATTENTION_NAME:
        return True
    warn_pattern_not_running(model_config, type(model).__name__, stacklevel=3)
    return False


def warn_pattern_not_running(model_config, where: str | None = None, stacklevel: int = 2) -> None:
    """Warn (``warnings.warn`` and the log) that the model with this config records a sparse attention pattern
    (``config.hf_sparse_attention``) but runs another attention implementation, so its attention is full."""
    raw = getattr(model_config, CONFIG_KEY, None)
    running = getattr(model_config, "_attn_implementation", None)
    try:
        what = repr(SparseAttentionConfig.from_dict(raw).pattern_for(None))
    except Exception:  # an unreadable record is still a pattern that is not running
        what = "a sparse attention pattern"
    message = (
        f"{where or family_name(model_config)}'s config records {what} (config.{CONFIG_KEY}) but the model runs "
        f"attn_implementation={running!r}: the pattern is NOT applied and attention is full. Load it with "
        f"from_pretrained(..., attn_implementation={ATTENTION_NAME!r}) or call "
        f"model.set_attn_implementation({ATTENTION_NAME!r})."
    )
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
    logger.warning(message)
