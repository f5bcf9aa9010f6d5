"""The ``hf_sparse`` attention implementation, registered with transformers' ``AttentionInterface`` and
``AttentionMaskInterface`` under the same name (without the mask entry a model would silently get no mask).

The mask function does not build a dense (B, 1, Sq, Skv) mask: it returns a :class:`SparseMaskInfo` — causal or
not, offsets, and the key padding — and the attention function combines it with the layer's pattern (from
``model.config.hf_sparse_attention``, see :func:`~hf_sparse.attention.apply_sparse_attention_`) into the block
layout our kernel runs over. Masks transformers composes from other pieces (packed sequences, a model's own
sliding window) arrive as a dense boolean mask and run through the reference path, intersected with the pattern.

Model families differ in what they pass (see :mod:`hf_sparse.attention.families`): an additive bias (T5's relative
position bias) and logit soft-capping (Gemma 2) are honoured by the reference path; cross-attention runs as full
attention; any other argument that changes the result, and a layer selection on modules without a layer index,
raise a :class:`~hf_sparse.errors.ConfigError` instead of being dropped.
"""

from __future__ import annotations

import dataclasses
import json
import weakref

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

from ..attention.apply import recorded_input_ids, warn_pattern_not_running
from ..attention.config import ATTENTION_NAME, CONFIG_KEY, SparseAttentionConfig
from ..attention.families import (
    begin_forward,
    check_attention_kwargs,
    family_name,
    is_cross_attention,
    layer_index_of,
    layer_selection_error,
)
from ..attention.functional import lowrank_attention, sparse_attention, sparse_attention_reference
from ..attention.patterns import Full, SlidingWindow
from ..errors import ConfigError

__all__ = ["ATTENTION_NAME", "SparseMaskInfo", "sparse_attention_forward", "sparse_attention_mask", "CONFIG_KEY"]


@dataclasses.dataclass
class SparseMaskInfo:
    """What the model's mask says, in the compact form our kernels use.

    Attributes:
        causal: the model's mask is causal.
        q_offset, kv_offset: absolute position of the first query / key.
        key_padding: (B, kv_length) bool, True = a real key; ``None`` when nothing is padded.
        dense: (B, 1, Sq, Skv) bool for masks that are neither plain causal nor plain bidirectional (they run through
            the reference path); else ``None``.
    """

    causal: bool
    q_offset: int
    kv_offset: int
    q_length: int
    kv_length: int
    key_padding: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    @property
    def ndim(self) -> int:  # a prepared (4-D) mask to transformers' mask preprocessing, like the shape below
        return 4

    @property
    def shape(self) -> tuple[int, ...]:  # what code that inspects a mask's shape expects
        return (
            self.key_padding.shape[0] if self.key_padding is not None else 1,
            1,
            self.q_length,
            self.kv_length,
        )


def sparse_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> SparseMaskInfo:
    """The ``AttentionMaskInterface`` entry of ``hf_sparse`` (same signature as transformers' ``sdpa_mask``)."""
    # Called once per forward pass of the model, before its first layer: the order of the attention calls that
    # follow gives layer indices to modules that have none (see hf_sparse.attention.families.layer_index_of).
    begin_forward(kwargs.get("config"))
    q_offset, kv_offset = int(q_offset), int(kv_offset)
    if isinstance(attention_mask, SparseMaskInfo):
        # generate() prepares the mask ahead of the forward pass for static (compileable) caches, with this very
        # function; the forward pass then asks for it again for the same step.
        if (attention_mask.q_length, attention_mask.kv_length) == (q_length, kv_length) and (
            attention_mask.q_offset,
            attention_mask.kv_offset,
        ) == (q_offset, kv_offset):
            return attention_mask
        raise ConfigError(
            f"attn_implementation={ATTENTION_NAME!r}: a mask prepared for {attention_mask.q_length} queries over "
            f"{attention_mask.kv_length} keys was passed for {q_length} over {kv_length}; pass the 2-D attention "
            "mask instead."
        )
    info = SparseMaskInfo(
        causal=mask_function is causal_mask_function,
        q_offset=q_offset,
        kv_offset=kv_offset,
        q_length=q_length,
        kv_length=kv_length,
    )
    if mask_function not in (causal_mask_function, bidirectional_mask_function):
        kw = {k: v for k, v in kwargs.items() if k in ("device", "use_vmap")}
        info.dense = sdpa_mask(
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            mask_function=mask_function,
            attention_mask=attention_mask,
            allow_is_causal_skip=False,
            allow_is_bidirectional_skip=False,
            **kw,
        )
        return info
    if attention_mask is not None:
        padding = prepare_padding_mask(attention_mask.to(torch.bool), kv_length, kv_offset)
        padding = padding[:, kv_offset : kv_offset + kv_length]
        if not bool(padding.all()):
            info.key_padding = padding
    return info


_CONFIG_CACHE: dict[str, SparseAttentionConfig] = {}


def config_of(model_config) -> SparseAttentionConfig:
    """The :class:`SparseAttentionConfig` recorded in a model config (parsed once per distinct value)."""
    raw = getattr(model_config, CONFIG_KEY, None)
    if raw is None:
        raise ConfigError(
            f"attn_implementation={ATTENTION_NAME!r} needs a sparse attention config on the model: call "
            "hf_sparse.attention.apply_sparse_attention_(model, SparseAttentionConfig(...)) (or set "
            f"config.{CONFIG_KEY} to its to_dict() before loading). A model made dense again (config.{CONFIG_KEY} "
            "deleted) should also drop config.attn_implementation and switch with "
            "model.set_attn_implementation('sdpa')."
        )
    if isinstance(raw, SparseAttentionConfig):
        return raw
    key = json.dumps(raw, sort_keys=True)
    if key not in _CONFIG_CACHE:
        _CONFIG_CACHE[key] = SparseAttentionConfig.from_dict(raw)
    return _CONFIG_CACHE[key]


def _global_flags(cfg: SparseAttentionConfig, model_config, total: int, device) -> torch.Tensor | None:
    if not cfg.global_token_ids:
        return None
    ids = recorded_input_ids(model_config)
    if ids is None or ids.shape[-1] != total:
        raise ConfigError(
            "global_token_ids needs the input_ids of the forward pass: apply the config with "
            "hf_sparse.attention.apply_sparse_attention_ (it records them), and pass input_ids (not inputs_embeds)."
        )
    flags = torch.isin(ids.to(device), torch.tensor(cfg.global_token_ids, device=device))
    for p in cfg.global_positions:
        if p < total:
            flags[:, p] = True
    return flags


def sparse_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``AttentionInterface`` entry of ``hf_sparse``: (B, H, S, D) query/key/value in, (B, S, H, D) out.

    Of the keyword arguments, ``position_bias`` (an additive score bias, T5) and ``softcap`` (Gemma 2) are applied
    to the scores before the pattern masks them, ``sliding_window`` is the model's own window (already in the mask
    our mask function composed), ``is_causal`` is used when no mask is given; any other argument that changes the
    result raises.
    """
    check_attention_kwargs(module, kwargs)
    bias = kwargs.get("position_bias")
    softcap = kwargs.get("softcap")
    model_config = getattr(module, "config", None)
    cfg = config_of(model_config)
    layer_idx = getattr(module, "layer_idx", None)
    if isinstance(attention_mask, SparseMaskInfo):
        info = attention_mask
    elif attention_mask is None:  # e.g. a module called on its own, or a mask transformers decided to skip
        is_causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
        sq, skv = query.shape[2], key.shape[2]
        info = SparseMaskInfo(
            causal=causal, q_offset=skv - sq if causal else 0, kv_offset=0, q_length=sq, kv_length=skv
        )
    elif isinstance(attention_mask, torch.Tensor):
        # transformers hands a 4-D mask given to the model straight to the layers, past the mask function: a custom
        # mask or an additive (ALiBi-style) bias the pattern would have to be combined with.
        kind = "an additive bias" if attention_mask.is_floating_point() else "a boolean mask"
        raise ConfigError(
            f"hf_sparse attention: {family_name(model_config)} ({type(module).__name__}) got {kind} of shape "
            f"{tuple(attention_mask.shape)} as its attention mask (a 4-D mask passed to the model), which the sparse "
            "attention implementation does not combine with its pattern and will not drop silently; pass the 2-D "
            "padding mask (batch, length), or use attn_implementation='eager' or 'sdpa' for a custom mask."
        )
    else:
        raise ConfigError(
            f"attn_implementation={ATTENTION_NAME!r} got a {type(attention_mask).__name__} mask; it needs the mask "
            "its own mask function builds. Load or set the implementation through transformers "
            f"(attn_implementation={ATTENTION_NAME!r} or model.set_attn_implementation({ATTENTION_NAME!r}))."
        )
    if is_cross_attention(module, query.shape[2], key.shape[2], info.causal):
        # Queries of one sequence over keys of another: a window over positions means nothing there (and the
        # decoder's position is not the query's index), so cross-attention stays full attention.
        out = sparse_attention(
            query,
            key,
            value,
            Full(),
            key_padding_mask=info.key_padding,
            scale=scaling,
            dropout=dropout,
            bias=bias,
            softcap=softcap,
            block_q=cfg.block_q,
            backend=None if cfg.backend == "auto" else cfg.backend,
        )
        return out.transpose(1, 2).contiguous(), None
    if layer_idx is None and (cfg.layers or cfg.layer_windows):
        layer_idx = layer_index_of(module, model_config)
        if layer_idx is None:
            raise layer_selection_error(model_config, type(module).__name__)
    pattern = cfg.pattern_for(layer_idx)
    causal = info.causal or cfg.causal
    window = kwargs.get("sliding_window")
    if window is not None and info.dense is None:
        # The model's own window, not composed into the mask (a mask built without it): transformers' causal
        # sliding window keeps the keys with q - k < window.
        if not causal:
            raise ConfigError(
                f"hf_sparse attention: {type(module).__name__} passes sliding_window={window} for a bidirectional "
                "layer without a mask that carries it; use attn_implementation='eager' or 'sdpa' for this model."
            )
        pattern = pattern & SlidingWindow(int(window) - 1, 0)
    if cfg.pattern == "lowrank" and cfg.applies_to(layer_idx):
        if causal or info.dense is not None:
            raise ConfigError(
                "pattern 'lowrank' pools keys along the whole sequence, so it cannot respect a causal (or other "
                "composed) mask: use it with encoders, or use a window pattern for decoders."
            )
        if bias is not None or softcap is not None:
            raise ConfigError(
                f"hf_sparse attention: pattern 'lowrank' pools keys, so it cannot apply the per-key score "
                f"{'bias' if bias is not None else 'soft-capping'} that {type(module).__name__} passes; use a "
                "window pattern for this model."
            )
        out = lowrank_attention(
            query, key, value, cfg.rank, key_padding_mask=info.key_padding, scale=scaling, dropout=dropout
        )
        return out.transpose(1, 2).contiguous(), None
    is_global = _global_flags(cfg, model_config, info.kv_offset + info.kv_length, query.device)
    common = dict(
        causal=causal,
        scale=scaling,
        q_offset=info.q_offset,
        kv_offset=info.kv_offset,
        is_global=is_global,
        bias=bias,
        softcap=softcap,
    )
    if info.dense is not None:
        out = _dense_path(query, key, value, pattern, info.dense, dropout=dropout, top_k=cfg.top_k, **common)
    else:
        out = sparse_attention(
            query,
            key,
            value,
            pattern,
            key_padding_mask=info.key_padding,
            dropout=dropout,
            top_k=cfg.top_k,
            block_q=cfg.block_q,
            backend=None if cfg.backend == "auto" else cfg.backend,
            **common,
        )
    return out.transpose(1, 2).contiguous(), None


def _dense_path(
    query, key, value, pattern, dense, *, causal, scale, q_offset, kv_offset, is_global, dropout, top_k, bias, softcap
):
    # A mask transformers composed (packed sequences, a model's own window): the pattern intersected with it, by
    # the reference. The reference's padding argument is per key; a general mask is applied through is_global-free
    # composition: run per batch row with the row's mask as an extra pattern.
    from ..attention.patterns import Pattern

    class _Given(Pattern):
        def __init__(self, m):
            self.m = m

        def __call__(self, q, k, *, is_global=None, length=None):
            return self.m[(q - q_offset).clamp(min=0), (k - kv_offset).clamp(min=0)]

    outs = []
    for b in range(query.shape[0]):
        row = dense[b if dense.shape[0] > 1 else 0, 0]
        outs.append(
            sparse_attention_reference(
                query[b : b + 1],
                key[b : b + 1],
                value[b : b + 1],
                pattern & _Given(row),
                causal=causal,
                scale=scale,
                q_offset=q_offset,
                kv_offset=kv_offset,
                is_global=None if is_global is None else is_global[b : b + 1],
                dropout=dropout,
                top_k=top_k,
                bias=None if bias is None else bias[b : b + 1] if bias.shape[0] > 1 else bias,
                softcap=softcap,
            )
        )
    return torch.cat(outs)


AttentionInterface.register(ATTENTION_NAME, sparse_attention_forward)
AttentionMaskInterface.register(ATTENTION_NAME, sparse_attention_mask)


# Model configs (by id) already warned that the pattern they record does not run.
_WARNED: set[int] = set()


def _warning_mask(name: str, original):
    """``original`` (another implementation's mask function), warning once per model config that records a sparse
    attention pattern: such a model was loaded or switched to ``name`` (``from_pretrained(path,
    attn_implementation="sdpa")`` on a checkpoint saved with a pattern), so its attention is full, and nothing
    else would say so. The mask is ``original``'s, unchanged."""

    def mask(*args, **kwargs):
        config = kwargs.get("config")
        if config is not None and getattr(config, CONFIG_KEY, None) is not None and id(config) not in _WARNED:
            key = id(config)
            _WARNED.add(key)
            weakref.finalize(config, _WARNED.discard, key)
            warn_pattern_not_running(config, stacklevel=3)
        return original(*args, **kwargs)

    mask.__wrapped__ = original
    mask.__name__ = getattr(original, "__name__", name)
    return mask


# Every other mask implementation transformers has warns when it runs a model whose config records a pattern.
for _name in AttentionMaskInterface().valid_keys():
    if _name != ATTENTION_NAME:
        _original = AttentionMaskInterface()[_name]
        if not hasattr(_original, "__wrapped__"):  # a module reloaded: wrap once
            AttentionMaskInterface.register(_name, _warning_mask(_name, _original))
