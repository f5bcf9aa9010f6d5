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
        """The (q_length, kv_length) bool mask this layout computes (for tests)."""
        out = torch.zeros(self.q_length, -(-self.kv_length // KEY_BLOCK) * KEY_BLOCK, dtype=torch.bool)
        shifts = torch.arange(KEY_BLOCK, dtype=torch.int64)
        ptr = self.kv_ptr.tolist()
        for qb in range(len(ptr) - 1):
            i0, i1 = qb * self.block_q, min(self.q_length, (qb + 1) * self.block_q)
            for p in range(ptr[qb], ptr[qb + 1]):
                j0 = int(self.kv_blocks[p]) * KEY_BLOCK
                mi = int(self.mask_index[p])
                if mi < 0:
                    out[i0:i1, j0 : j0 + KEY_BLOCK] = True
                else:
                    words = self.bits[mi, : i1 - i0].unsqueeze(1)
                    out[i0:i1, j0 : j0 + KEY_BLOCK] = ((words >> shifts) & 1).bool()
        return out[:, : self.kv_length]


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
    return _build(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q, None)


def _build(pattern, q_length, kv_length, q_offset, kv_offset, causal, block_q, is_global) -> BlockLayout:
    nqb, nkb = -(-q_length // block_q), -(-kv_length // KEY_BLOCK)
    k = torch.arange(kv_offset, kv_offset + nkb * KEY_BLOCK).unsqueeze(0)
    k_valid = (torch.arange(nkb * KEY_BLOCK) < kv_length).unsqueeze(0)
    g = None
    if is_global is not None:  # pad so padded key positions index something (they are masked by k_valid)
        g = torch.zeros(max(kv_offset + nkb * KEY_BLOCK, q_offset + nqb * block_q), dtype=torch.bool)
        g[: is_global.numel()] = is_global.cpu()
    ptr, blocks, index, bits = [0], [], [], []
    n_partial = 0
    for qb in range(nqb):
        rows = min(block_q, q_length - qb * block_q)
        q = torch.arange(q_offset + qb * block_q, q_offset + qb * block_q + block_q).unsqueeze(1)
        m = pattern(q, k, is_global=g, length=kv_offset + kv_length) & k_valid
        if causal:
            m = m & (k <= q)
        m[rows:] = False  # query rows past the end
        tiles = m.reshape(block_q, nkb, KEY_BLOCK)
        any_ = tiles.any(dim=(0, 2))
        full = tiles[:rows].all(dim=(0, 2)) & k_valid.reshape(nkb, KEY_BLOCK).all(1)
        kept = torch.nonzero(any_).reshape(-1)
        blocks.append(kept)
        partial = ~full[kept]
        idx = torch.full((kept.numel(),), -1, dtype=torch.int64)
        count = int(partial.sum())
        idx[partial] = torch.arange(n_partial, n_partial + count)
        n_partial += count
        index.append(idx)
        if count:
            bits.append(_pack_bits(tiles[:, kept[partial]].transpose(0, 1)))  # (count, block_q)
        ptr.append(ptr[-1] + kept.numel())
    return BlockLayout(
        kv_ptr=torch.tensor(ptr, dtype=torch.int32),
        kv_blocks=torch.cat(blocks).to(torch.int32) if blocks else torch.zeros(0, dtype=torch.int32),
        mask_index=torch.cat(index).to(torch.int32) if index else torch.zeros(0, dtype=torch.int32),
        bits=torch.cat(bits) if bits else torch.zeros(0, block_q, dtype=torch.int64),
        q_length=q_length,
        kv_length=kv_length,
        block_q=block_q,
    )
