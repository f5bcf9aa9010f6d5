"""Block layouts: which (query block, key block) tiles a pattern keeps, and the exact mask inside partial tiles.

Our attention kernels walk this layout instead of the full score matrix: tiles nobody may attend are skipped,
tiles that are wholly allowed run without a mask, and partial tiles carry one 64-bit key mask per query row. The
layout is built by evaluating the pattern's predicate one query block at a time (so memory stays at one block row of
the score matrix) and cached per pattern, length and offsets: every layer of a forward pass, and every step of
training at a fixed length, reuses it.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .patterns import Pattern

__all__ = ["BlockLayout", "KEY_BLOCK", "build_layout"]

#: Keys per block (one 64-bit mask word per query row); fixed by the kernels.
KEY_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """CSR over query blocks of ``block_q`` rows.

    Shapes:
        kv_ptr: (query blocks + 1,) int32. kv_blocks: (tiles,) int32 key-block indices (blocks of 64 keys).
        mask_index: (tiles,) int32: -1 for a wholly allowed tile, else its row in ``bits``.
        bits: (partial tiles, block_q) int64: bit j of row i allows key ``64 * block + j`` for query
        ``block_q * query_block + i``.
    """

    kv_ptr: torch.Tensor
    kv_blocks: torch.Tensor
    mask_index: torch.Tensor
    bits: torch.Tensor
    q_length: int
    kv_length: int
    block_q: int

    @property
    def tiles(self) -> int:
        return int(self.kv_blocks.numel())

    def density(self) -> float:
        """Fraction of the (query block, key block) tiles that are computed."""
        nqb = self.kv_ptr.numel() - 1
        nkb = -(-self.kv_length // KEY_BLOCK)
        return self.tiles / max(nqb * nkb, 1)

    def to_dense(self) -> torch.Tensor:
        """The (q_length, kv_length) bool mask this layout computes."""
        from ..ops._autograd import attention_mask_from_layout

        return attention_mask_from_layout(
            self.kv_ptr, self.kv_blocks, self.mask_index, self.bits, self.block_q, self.q_length, self.kv_length
        )


def _pack_bits(tile: torch.Tensor) -> torch.Tensor:
    """(..., 64) bool -> (...) int64 with bit j set where tile[..., j] (distinct powers of two: sum == or)."""
    shifts = torch.arange(KEY_BLOCK, dtype=torch.int64, device=tile.device)
    return (tile.to(torch.int64) << shifts).sum(-1)


def build_layout(
    pattern: Pattern,
    q_length: int,
    kv_length: int,
    *,
    q_offset: int = 0,
    kv_offset: int = 0,
    causal: bool = False,
    block_q: int = 24,
    is_global: torch.Tensor | None = None,
) -> BlockLayout:
    """The block layout of ``pattern`` (and the causal mask when ``causal``) for one sequence.

    Args:
        q_offset, kv_offset: absolute position of the first query / key (decoding with a cache).
        block_q: query rows per block (the kernel's tile height).
        is_global: (kv_offset + kv_length,) bool marking global positions of this sequence (token-id globals);
            layouts with it are not cached.
    """
    if is_global is None:
        return _cached_layout(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q)
    return _build(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q, is_global)


@functools.lru_cache(maxsize=64)
def _cached_layout(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q) -> BlockLayout:
    # Built outside inference mode: a cached layout first made under torch.inference_mode would otherwise hold
    # inference tensors, which a later training step at the same length cannot save for backward.
    with torch.inference_mode(False):
        return _build(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q, None)


def _build(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q, is_global) -> BlockLayout:
    nqb, nkb = -(-q_length // block_q), -(-kv_length // KEY_BLOCK)
    k = torch.arange(kv_offset, kv_offset + nkb * KEY_BLOCK).unsqueeze(0)
    k_valid = (torch.arange(nkb * KEY_BLOCK) < kv_length).unsqueeze(0)
    g = None
    if is_global is not None:  # pad so padded key positions index something (they are masked by k_valid)
        g = torch.zeros(max(kv_offset + nkb * KEY_BLOCK, q_offset + nqb * block_q), dtype=torch.bool)
        g[: is_global.numel()] = is_global.cpu()
    # Several query blocks per evaluation (about 2M mask entries at a time): few Python steps, bounded memory.
    step = max(1, (1 << 21) // (block_q * nkb * KEY_BLOCK))
    kept_blocks, full_blocks, tiles_all = [], [], []
    for qb0 in range(0, nqb, step):
        qb1 = min(nqb, qb0 + step)
        q = torch.arange(q_offset + qb0 * block_q, q_offset + qb1 * block_q).unsqueeze(1)
        m = pattern(q, k, is_global=g, length=kv_offset + kv_length) & k_valid
        if causal:
            m = m & (k <= q)
        m[q.reshape(-1) - q_offset >= q_length] = False  # query rows past the end
        tiles = m.reshape(qb1 - qb0, block_q, nkb, KEY_BLOCK).transpose(1, 2)  # (blocks, nkb, block_q, 64)
        rows = (q_length - torch.arange(qb0, qb1) * block_q).clamp(max=block_q)  # real rows per query block
        row_ok = torch.arange(block_q).unsqueeze(0) < rows.unsqueeze(1)  # (blocks, block_q)
        any_ = tiles.any(dim=(2, 3))
        # a tile is wholly allowed when every real row allows every real key
        all_keys = tiles.all(dim=3) | ~row_ok.unsqueeze(1)  # (blocks, nkb, block_q)
        full = all_keys.all(dim=2) & k_valid.reshape(nkb, KEY_BLOCK).all(1)
        kept_blocks.append(any_)
        full_blocks.append(full)
        tiles_all.append(tiles)
    any_ = torch.cat(kept_blocks)  # (nqb, nkb)
    full = torch.cat(full_blocks)
    qb_idx, kb_idx = torch.nonzero(any_, as_tuple=True)  # row-major: grouped by query block, keys ascending
    partial = ~full[qb_idx, kb_idx]
    index = torch.full((qb_idx.numel(),), -1, dtype=torch.int64)
    index[partial] = torch.arange(int(partial.sum()))
    bits = []
    for qb0, tiles in zip(range(0, nqb, step), tiles_all):
        sel = partial & (qb_idx >= qb0) & (qb_idx < qb0 + tiles.shape[0])
        if bool(sel.any()):
            bits.append(_pack_bits(tiles[qb_idx[sel] - qb0, kb_idx[sel]]))  # (count, block_q)
    ptr = torch.zeros(nqb + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(any_.sum(1), 0)
    return BlockLayout(
        kv_ptr=ptr.to(torch.int32),
        kv_blocks=kb_idx.to(torch.int32),
        mask_index=index.to(torch.int32),
        bits=torch.cat(bits) if bits else torch.zeros(0, block_q, dtype=torch.int64),
        q_length=q_length,
        kv_length=kv_length,
        block_q=block_q,
    )
