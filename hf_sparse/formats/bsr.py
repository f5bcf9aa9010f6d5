"""Block-sparse row (BSR) storage: dense r x c blocks, CSR over block rows."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatError
from .base import (
    SparseFormat,
    check_indices,
    check_pointers,
    check_shape,
    check_values,
    check_weight,
    index_dtype,
    register_format,
    segment_pointers,
)

__all__ = ["BSR"]


def _check_block(block: Any, shape: tuple[int, int]) -> tuple[int, int]:
    if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise FormatError(f"bsr: block must be two positive integers, got {block!r}.")
    r, c = block
    if shape[0] % r or shape[1] % c:
        raise FormatError(
            f"bsr: shape {shape} is not divisible by the block {tuple(block)}; pad the weight or "
            "choose a block that divides it."
        )
    return (int(r), int(c))


@register_format("bsr")
class BSR(SparseFormat):
    """A block is stored (densely, zeros included) when any position in it is kept.

    Shapes:
        crow_indices: (rows / r + 1,) int32. col_indices: (blocks,) block-column index. values: (blocks, r, c).
    """

    def __init__(self, crow_indices, col_indices, values, shape, block, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.block = _check_block(block, self.shape)
        self.crow_indices, self.col_indices, self.values = crow_indices, col_indices, values
        if validate:
            self.validate()

    @classmethod
    def from_dense(cls, weight, mask=None, *, block=(16, 16), **params: Any):
        if params:
            raise FormatError(f"bsr takes only `block`, got {sorted(params)}.")
        keep = check_weight(weight, mask)
        shape = tuple(weight.shape)
        r, c = _check_block(block, shape)
        br, bc = shape[0] // r, shape[1] // c
        blocks_keep = keep.reshape(br, r, bc, c).any(dim=(1, 3))
        brow, bcol = torch.nonzero(blocks_keep, as_tuple=True)
        tiles = (weight * keep).reshape(br, r, bc, c).permute(0, 2, 1, 3)[brow, bcol].contiguous()
        return cls(
            segment_pointers(blocks_keep.sum(1)), bcol.to(index_dtype(bc)), tiles, shape, (r, c), validate=False
        )

    def to_dense(self):
        r, c = self.block
        br, bc = self.shape[0] // r, self.shape[1] // c
        brow = torch.repeat_interleave(torch.arange(br), torch.diff(self.crow_indices.to(torch.int64)))
        out = torch.zeros(br, bc, r, c, dtype=self.values.dtype, device=self.values.device)
        out[brow, self.col_indices.to(torch.int64)] = self.values
        return out.permute(0, 2, 1, 3).reshape(self.shape)

    def tensors(self):
        return {"crow_indices": self.crow_indices, "col_indices": self.col_indices, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "block": list(self.block)}

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        return cls(
            tensors["crow_indices"],
            tensors["col_indices"],
            tensors["values"],
            params["shape"],
            params["block"],
            validate=validate,
        )

    def validate(self):
        r, c = self.block
        br, bc = self.shape[0] // r, self.shape[1] // c
        check_values(self.name, self.values, ndim=3)
        if tuple(self.values.shape[1:]) != (r, c):
            raise FormatError(f"bsr: values blocks have shape {tuple(self.values.shape[1:])}; expected {(r, c)}.")
        nblocks = self.values.shape[0]
        check_pointers(self.name, "crow_indices", self.crow_indices, br, nblocks)
        check_indices(self.name, "col_indices", self.col_indices, bc, self.crow_indices)
        if self.col_indices.numel() != nblocks:
            raise FormatError(f"bsr: col_indices has {self.col_indices.numel()} entries, values {nblocks} blocks.")
