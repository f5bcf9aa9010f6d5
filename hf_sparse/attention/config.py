"""``SparseAttentionConfig``: which attention pattern each layer of a model uses."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from ..config import BaseConfig, check_seed, register_config
from ..errors import ConfigError, quote
from .patterns import BlockSparse, DilatedWindow, Full, GlobalTokens, Pattern, SlidingWindow

__all__ = ["SparseAttentionConfig", "ATTENTION_NAME", "CONFIG_KEY"]

#: The name to pass as ``attn_implementation`` (:mod:`hf_sparse.integrations.attention` registers it).
ATTENTION_NAME = "hf_sparse"
#: The model-config attribute holding the :class:`SparseAttentionConfig` as a dict (saved in ``config.json``).
CONFIG_KEY = "hf_sparse_attention"


@register_config("sparse_attention")
@dataclasses.dataclass(frozen=True)
class SparseAttentionConfig(BaseConfig):
    """Sparse attention for a transformers model, run as ``attn_implementation="hf_sparse"``.

    The model's own masks (padding, and causal for decoders) always apply on top of the pattern.

    Args:
        pattern: ``"window"`` (sliding window of ``window`` positions on each side; ``window_right`` sets the side
            after the query differently), ``"dilated"`` (every ``dilation``-th position within
            ``window * dilation``), ``"bigbird"`` (``block``-sized tiles: ``window_blocks`` on each side of the
            diagonal, ``global_blocks`` global block rows/columns, ``random_blocks`` random key blocks per query
            block, drawn with ``seed``), ``"lowrank"`` (Linformer-style: keys and values pooled along the sequence
            to ``rank`` segment means before the softmax; encoders only) or ``"full"``.
        global_positions: positions that attend everywhere and that every query attends to (e.g. ``[0]`` for
            ``[CLS]``); added to any pattern.
        global_token_ids: token ids that are global wherever they occur (needs the model's ``input_ids``:
            :func:`~hf_sparse.attention.apply_sparse_attention_` records them on each forward pass).
        causal: also apply a causal mask (for encoders; decoders are causal already).
        top_k: keep only the ``top_k`` largest allowed scores of each query (dynamic attention pruning; computed
            by the PyTorch reference, not the kernel).
        layers: layer indices that use the pattern (empty: all); the other layers use full attention.
        layer_windows: per-layer window sizes, keyed by layer index (as a string, or a regular expression over it).
        block_q: query rows per kernel tile.
        backend: ``"auto"`` (our kernel where it applies, else the reference), ``"cpu"`` or ``"reference"``.
    """

    pattern: Literal["window", "dilated", "bigbird", "lowrank", "full"] = "window"
    window: int = 128
    window_right: int | None = None
    dilation: int = 2
    block: int = 64
    window_blocks: int = 1
    global_blocks: int = 1
    random_blocks: int = 2
    seed: int = 0
    rank: int = 64
    global_positions: tuple[int, ...] = ()
    global_token_ids: tuple[int, ...] = ()
    causal: bool = False
    top_k: int | None = None
    layers: tuple[int, ...] = ()
    layer_windows: dict[str, int] = dataclasses.field(default_factory=dict)
    block_q: int = 24
    backend: Literal["auto", "cpu", "reference"] = "auto"

    def validate(self) -> None:
        for name in ("window", "window_blocks", "global_blocks", "random_blocks"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SparseAttentionConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.window_right is not None and self.window_right < 0:
            raise ConfigError(f"SparseAttentionConfig.window_right must be >= 0, got {self.window_right}.")
        if self.rank < 1:
            raise ConfigError(f"SparseAttentionConfig.rank must be >= 1, got {self.rank}.")
        if self.pattern == "lowrank" and (self.causal or self.top_k or self.global_positions or self.global_token_ids):
            raise ConfigError(
                "SparseAttentionConfig: pattern 'lowrank' pools keys along the whole sequence; it does not combine "
                "with causal, top_k or global tokens."
            )
        if self.dilation < 1:
            raise ConfigError(f"SparseAttentionConfig.dilation must be >= 1, got {self.dilation}.")
        if self.block < 1:
            raise ConfigError(f"SparseAttentionConfig.block must be >= 1, got {self.block}.")
        if any(t < 0 for t in self.global_token_ids):
            raise ConfigError(
                f"SparseAttentionConfig.global_token_ids must be token ids >= 0, got {list(self.global_token_ids)}."
            )
        check_seed(self.seed, "SparseAttentionConfig.seed")
        if any(p < 0 for p in self.global_positions):
            raise ConfigError(
                f"SparseAttentionConfig.global_positions must be >= 0, got {list(self.global_positions)}."
            )
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"SparseAttentionConfig.top_k must be >= 1, got {self.top_k}.")
        if any(i < 0 for i in self.layers):
            raise ConfigError(f"SparseAttentionConfig.layers must be layer indices >= 0, got {list(self.layers)}.")
        for key, w in self.layer_windows.items():
            try:
                re.compile(key)
            except re.error as exc:
                raise ConfigError(
                    f"SparseAttentionConfig.layer_windows key {quote(key)} is not a valid pattern: {exc}."
                ) from None
            if w < 0:
                raise ConfigError(f"SparseAttentionConfig.layer_windows[{quote(key)}] must be >= 0, got {w}.")
        if not 1 <= self.block_q <= 256:
            raise ConfigError(f"SparseAttentionConfig.block_q must be in [1, 256], got {self.block_q}.")

    def applies_to(self, layer_idx: int | None) -> bool:
        """Whether layer ``layer_idx`` uses the pattern (``None``: a module without an index, e.g. a standalone
        attention block, always does)."""
        return not self.layers or layer_idx is None or layer_idx in self.layers

    def window_for(self, layer_idx: int | None) -> int:
        if layer_idx is not None:
            for key, w in self.layer_windows.items():
                if key == str(layer_idx) or re.fullmatch(key, str(layer_idx)):
                    return w
        return self.window

    def pattern_for(self, layer_idx: int | None = None) -> Pattern:
        """The pattern of layer ``layer_idx`` (full attention for layers not in ``layers``; ``"lowrank"`` is not a
        mask and runs its own path, see :func:`~hf_sparse.attention.lowrank_attention`)."""
        if not self.applies_to(layer_idx) or self.pattern in ("full", "lowrank"):
            base: Pattern = Full()
        elif self.pattern == "window":
            base = SlidingWindow(self.window_for(layer_idx), self.window_right)
        elif self.pattern == "dilated":
            base = DilatedWindow(self.window_for(layer_idx), self.dilation)
        else:
            base = BlockSparse(self.block, self.window_blocks, self.global_blocks, self.random_blocks, self.seed)
        if isinstance(base, Full) or not (self.global_positions or self.global_token_ids):
            return base
        return base | GlobalTokens(self.global_positions, self.global_token_ids)
