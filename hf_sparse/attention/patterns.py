"""Sparse attention patterns as composable mask predicates.

A pattern answers "may query position ``q`` attend to key position ``k``?" for broadcastable integer tensors of
absolute positions, the way a FlexAttention ``mask_mod`` does, so patterns compose with ``|`` (union) and ``&``
(intersection) and any of them can be turned into a dense boolean mask (the test oracle) or into the block layout
our kernels run over (:mod:`hf_sparse.attention.layout`). Padding and causality are not part of a pattern: the
model's own mask supplies them and is always applied on top.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError, quote

__all__ = [
    "Pattern",
    "Full",
    "SlidingWindow",
    "DilatedWindow",
    "GlobalTokens",
    "BlockSparse",
    "Union",
    "Intersection",
    "dense_mask",
]


class Pattern:
    """Base class: ``pattern(q, k)`` is a bool tensor, True where attention is allowed.

    ``length`` is the number of key positions of the whole sequence (offset included), for patterns that depend on
    it (BigBird's random blocks are drawn among the sequence's key blocks); ``is_global`` marks global positions.

    Shapes:
        q, k: broadcastable int64 tensors of absolute positions. Returns: their broadcast shape.
    """

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, *, is_global: torch.Tensor | None = None, length: int | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def __or__(self, other: Pattern) -> Pattern:
        return Union((self, other))

    def __and__(self, other: Pattern) -> Pattern:
        return Intersection((self, other))

    @property
    def needs_tokens(self) -> bool:
        """Whether the pattern depends on token ids (global tokens chosen by id), so differs across a batch."""
        return False

    def key(self) -> tuple:
        """A hashable description, used to cache layouts."""
        return (type(self).__name__, *dataclasses.astuple(self))


@dataclasses.dataclass(frozen=True)
class Full(Pattern):
    """Every key (dense attention, still with the model's padding and causal masks)."""

    def __call__(self, q, k, *, is_global=None, length=None):
        return torch.ones(torch.broadcast_shapes(q.shape, k.shape), dtype=torch.bool, device=q.device)


@dataclasses.dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Keys within ``left`` positions before and ``right`` after the query (``right`` defaults to ``left``; a
    decoder's causal mask removes the keys after the query anyway).

    Args:
        left: half-width before the query (``q - k <= left``).
        right: half-width after it (``k - q <= right``); ``None`` means ``left``.
    """

    left: int
    right: int | None = None

    def __post_init__(self):
        _non_negative("SlidingWindow.left", self.left)
        if self.right is not None:
            _non_negative("SlidingWindow.right", self.right)

    @property
    def after(self) -> int:
        return self.left if self.right is None else self.right

    def __call__(self, q, k, *, is_global=None, length=None):
        d = q - k
        return (d <= self.left) & (-d <= self.after)


@dataclasses.dataclass(frozen=True)
class DilatedWindow(Pattern):
    """Every ``dilation``-th key within ``window * dilation`` positions of the query (on both sides): the receptive
    field of a window ``dilation`` times wider at the same cost (Longformer's dilated sliding window)."""

    window: int
    dilation: int = 2

    def __post_init__(self):
        _non_negative("DilatedWindow.window", self.window)
        if not isinstance(self.dilation, int) or self.dilation < 1:
            raise ConfigError(f"DilatedWindow.dilation must be a positive integer, got {quote(self.dilation)}.")

    def __call__(self, q, k, *, is_global=None, length=None):
        d = q - k
        return (d.abs() <= self.window * self.dilation) & (torch.remainder(d, self.dilation) == 0)


@dataclasses.dataclass(frozen=True)
class GlobalTokens(Pattern):
    """Global tokens attend to every key and every query attends to them (Longformer's global attention).

    Args:
        positions: absolute positions that are global (negative counts from the end is not supported: sequence
            lengths vary).
        token_ids: token ids that are global wherever they occur (e.g. ``[CLS]``); needs the batch's ``input_ids``
            (:func:`~hf_sparse.attention.apply_sparse_attention_` records them on each forward pass).
    """

    positions: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        for p in self.positions:
            _non_negative("GlobalTokens.positions", p)
        object.__setattr__(self, "positions", tuple(self.positions))
        object.__setattr__(self, "token_ids", tuple(self.token_ids))

    @property
    def needs_tokens(self) -> bool:
        return bool(self.token_ids)

    def global_positions(self, length: int, device=None) -> torch.Tensor:
        """(length,) bool: the positions chosen by ``positions``."""
        out = torch.zeros(length, dtype=torch.bool, device=device)
        idx = [p for p in self.positions if p < length]
        if idx:
            out[torch.tensor(idx, device=device)] = True
        return out

    def __call__(self, q, k, *, is_global=None, length=None):
        """``is_global``: a bool tensor indexed by position (length >= every q and k; per batch row when token ids
        are used, shaped (B, 1, 1) broadcast by the caller) marking global positions; without it only
        ``positions`` count."""
        n = int(max(int(q.max()), int(k.max()))) + 1 if q.numel() and k.numel() else 1
        g = self.global_positions(n, q.device) if is_global is None else is_global
        return g[..., q] | g[..., k] if g.dim() == 1 else _gather_global(g, q) | _gather_global(g, k)


def _gather_global(g: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    # g: (B, L) per batch row; pos: broadcastable positions -> (B, *pos.shape)
    return g[:, pos]


@dataclasses.dataclass(frozen=True)
class BlockSparse(Pattern):
    """BigBird-style block pattern over ``block``-sized tiles: a band of ``window_blocks`` blocks on each side of the
    diagonal, the first ``global_blocks`` block rows and columns, and ``random_blocks`` random key blocks per query
    block (drawn with ``seed`` among the sequence's key blocks, so the same for every call with the same length;
    query blocks past the keys, when queries outnumber keys, get none).
    """

    block: int = 64
    window_blocks: int = 1
    global_blocks: int = 1
    random_blocks: int = 2
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.block, int) or self.block < 1:
            raise ConfigError(f"BlockSparse.block must be a positive integer, got {quote(self.block)}.")
        for name in ("window_blocks", "global_blocks", "random_blocks"):
            _non_negative(f"BlockSparse.{name}", getattr(self, name))

    def random_table(self, n_blocks: int, device=None) -> torch.Tensor:
        """(n_blocks, random_blocks) int64: the random key blocks of each query block (seeded)."""
        g = torch.Generator().manual_seed(self.seed)
        r = min(self.random_blocks, n_blocks)
        if r == 0:
            return torch.zeros(n_blocks, 0, dtype=torch.int64, device=device)
        table = torch.stack([torch.randperm(n_blocks, generator=g)[:r] for _ in range(n_blocks)])
        return table.to(device)

    def __call__(self, q, k, *, is_global=None, length=None):
        qb, kb = torch.div(q, self.block, rounding_mode="floor"), torch.div(k, self.block, rounding_mode="floor")
        out = (qb - kb).abs() <= self.window_blocks
        out = out | (qb < self.global_blocks) | (kb < self.global_blocks)
        if self.random_blocks:
            if length is None:
                length = int(k.max()) + 1 if k.numel() else 1
            n = -(-length // self.block)
            table = self.random_table(n, q.device)  # (n, r): random key blocks of each query block
            hit = (table[qb.clamp(max=n - 1)] == kb.unsqueeze(-1)).any(-1) & (qb < n)
            out = out | hit
        return out


@dataclasses.dataclass(frozen=True)
class Union(Pattern):
    """Allowed where any part allows."""

    parts: tuple[Pattern, ...]

    def __call__(self, q, k, *, is_global=None, length=None):
        out = None
        for p in self.parts:
            m = p(q, k, is_global=is_global, length=length)
            out = m if out is None else out | m
        return out

    @property
    def needs_tokens(self) -> bool:
        return any(p.needs_tokens for p in self.parts)

    def key(self) -> tuple:
        return ("Union", *(p.key() for p in self.parts))


@dataclasses.dataclass(frozen=True)
class Intersection(Pattern):
    """Allowed where every part allows."""

    parts: tuple[Pattern, ...]

    def __call__(self, q, k, *, is_global=None, length=None):
        out = None
        for p in self.parts:
            m = p(q, k, is_global=is_global, length=length)
            out = m if out is None else out & m
        return out

    @property
    def needs_tokens(self) -> bool:
        return any(p.needs_tokens for p in self.parts)

    def key(self) -> tuple:
        return ("Intersection", *(p.key() for p in self.parts))


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {quote(value)}.")


def dense_mask(
    pattern: Pattern,
    q_length: int,
    kv_length: int,
    *,
    q_offset: int = 0,
    kv_offset: int = 0,
    causal: bool = False,
    is_global: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """The pattern as a dense boolean mask (True = attend), with the causal mask applied when ``causal``.

    Args:
        q_offset, kv_offset: absolute position of the first query / key (decoding with a cache).
        is_global: (B, kv_offset + kv_length) bool marking global positions per batch row (token-id globals).

    Shapes:
        Returns: (q_length, kv_length), or (B, q_length, kv_length) with a per-row ``is_global``.
    """
    q = torch.arange(q_offset, q_offset + q_length, device=device).unsqueeze(1)
    k = torch.arange(kv_offset, kv_offset + kv_length, device=device).unsqueeze(0)
    m = pattern(q, k, is_global=is_global, length=kv_offset + kv_length)
    if causal:
        m = m & (k <= q)
    return m
