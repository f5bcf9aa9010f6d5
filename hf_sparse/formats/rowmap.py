"""Embedding tables whose ids are routed to rows: row pruning with an id-to-row index (``rowmap``), and the
frequency-aware split of hot and cold ids into two formats (``hot``). See :mod:`hf_sparse.formats.embedding` for the
family."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import FormatError
from .base import FORMATS, SparseFormat, check_shape, check_tensor, index_dtype, register_format
from .embedding import check_float, check_params, float_tensor_names, is_int, lookup_rows

__all__ = ["RowMap", "Hot"]


# -- row pruning with remapping -------------------------------------------------------------------------------------
@register_format("rowmap")
class RowMap(SparseFormat):
    """Row ``i`` = ``values[remap[i]]``: kept ids have their own row, the others share rows.

    Shapes:
        remap: (rows,) int16 or int32 (the narrowest for ``values.shape[0]``). values: (stored rows, cols).
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("values",)

    def __init__(self, remap, values, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.remap, self.values = remap, values
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls, weight, mask=None, *, keep: int, shared: int = 1, importance: torch.Tensor | None = None, **params: Any
    ):
        """Keep the ``keep`` rows of highest ``importance`` (default: row norm; pass id frequencies to keep the
        frequent ids), and map the others round-robin (in importance order) onto ``shared`` rows, each the mean of
        its members."""
        if params or mask is not None:
            raise FormatError(f"rowmap takes keep, shared and importance (no mask), got {sorted(params)}.")
        rows, cols = weight.shape
        if not is_int(keep) or not 0 <= keep <= rows or not is_int(shared) or shared < 0:
            raise FormatError(f"rowmap: need 0 <= keep <= {rows} and shared >= 0, got keep={keep}, shared={shared}.")
        if keep < rows and shared < 1:
            raise FormatError("rowmap: with keep < rows, at least one shared row is needed for the other ids.")
        score = weight.detach().norm(dim=1) if importance is None else importance.detach().to(weight.device).double()
        if score.shape != (rows,):
            raise FormatError(f"rowmap: importance must have one value per row ({rows}), got {tuple(score.shape)}.")
        order = torch.argsort(score, descending=True, stable=True)
        shared = shared if keep < rows else 0
        remap = torch.empty(rows, dtype=torch.int64, device=weight.device)
        remap[order[:keep]] = torch.arange(keep, device=weight.device)
        rest = order[keep:]
        remap[rest] = keep + torch.arange(rest.numel(), device=weight.device) % max(shared, 1)
        total = torch.zeros(keep + shared, cols, dtype=torch.float64, device=weight.device)
        total.index_add_(0, remap, weight.detach().double())
        count = torch.zeros(keep + shared, dtype=torch.float64, device=weight.device)
        count.index_add_(0, remap, torch.ones(rows, dtype=torch.float64, device=weight.device))
        values = (total / count.clamp(min=1).unsqueeze(1)).to(weight.dtype)
        return cls(remap.to(index_dtype(keep + shared)), values, (rows, cols), validate=False)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.values[self.remap[ids.to(torch.int64)].to(torch.int64)]

    def to_dense(self) -> torch.Tensor:
        return self.values[self.remap.to(torch.int64)]

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def tensors(self):
        return {"remap": self.remap, "values": self.values}

    def params(self):
        return {"format": self.name, "shape": list(self.shape)}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        check_params(cls.name, params, set())
        return cls(tensors["remap"], tensors["values"], params["shape"], validate=validate)

    def validate(self) -> None:
        rows, cols = self.shape
        check_float(self.name, "values", self.values, 2)
        if self.values.shape[1] != cols or self.values.shape[0] < 1:
            raise FormatError(f"rowmap: values has shape {tuple(self.values.shape)}; expected (stored rows, {cols}).")
        stored = int(self.values.shape[0])
        check_tensor(self.name, "remap", self.remap, dtypes=(index_dtype(stored),), length=rows)
        if self.remap.device.type != "meta" and rows:
            wide = self.remap.to(torch.int64)
            bad = (wide < 0) | (wide >= stored)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                raise FormatError(f"rowmap: remap[{i}]={int(wide[i])} is out of range [0, {stored}).")


# -- frequency-aware split ------------------------------------------------------------------------------------------
def _nested(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@register_format("hot")
class Hot(SparseFormat):
    """The ``H`` ids in ``hot_ids`` (sorted) read their rows from the ``hot`` format (``H`` rows, in that order);
    every other id ``i`` reads row ``i - (number of hot ids below i)`` of the ``cold`` format (``rows - H`` rows).

    Tensors are the nested formats' with ``hot_`` and ``cold_`` prefixes, plus ``hot_ids`` (int32); params carry the
    nested formats' params under ``hot`` and ``cold``.
    """

    def __init__(self, hot_ids, hot: SparseFormat, cold: SparseFormat, shape, *, validate: bool = True):
        self.shape = check_shape(shape)
        self.hot_ids, self.hot, self.cold = hot_ids, hot, cold
        if validate:
            self.validate()

    @property
    def float_tensors(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.float_tensor_names(self.params())

    @classmethod
    def float_tensor_names(cls, params: dict) -> tuple[str, ...]:
        names = []
        for part in ("hot", "cold"):
            inner = params.get(part)
            if isinstance(inner, dict) and inner.get("format") in FORMATS:
                names += [f"{part}_{n}" for n in float_tensor_names(inner)]
        return tuple(names)

    @classmethod
    def split(
        cls,
        weight: torch.Tensor,
        hot_ids: torch.Tensor,
        hot_format: str,
        cold_format: str,
        hot_params=None,
        cold_params=None,
    ) -> Hot:
        """Store the rows of ``hot_ids`` in ``hot_format`` and the others in ``cold_format`` (``*_params``: their
        ``from_dense`` arguments)."""
        rows = weight.shape[0]
        hot_ids = torch.unique(hot_ids.to(torch.int64))
        if hot_ids.numel() and (int(hot_ids[0]) < 0 or int(hot_ids[-1]) >= rows):
            raise FormatError(f"hot: hot ids must be in [0, {rows}).")
        if not 0 < hot_ids.numel() < rows:
            raise FormatError(f"hot: need between 1 and {rows - 1} hot ids, got {hot_ids.numel()}.")
        is_hot = torch.zeros(rows, dtype=torch.bool, device=weight.device)
        is_hot[hot_ids.to(weight.device)] = True
        hot = FORMATS.get(hot_format).from_dense(weight[is_hot], **(hot_params or {}))
        cold = FORMATS.get(cold_format).from_dense(weight[~is_hot], **(cold_params or {}))
        return cls(hot_ids.to(torch.int32).to(weight.device), hot, cold, tuple(weight.shape))

    @classmethod
    def from_dense(cls, weight, mask=None, **params: Any):
        raise FormatError("hot: build it with Hot.split(weight, hot_ids, hot_format, cold_format, ...).")

    @property
    def values(self) -> torch.Tensor:
        return self.hot.values

    @property
    def dtype(self) -> torch.dtype:
        return self.cold.dtype

    @property
    def nnz(self) -> int:
        return int(self.hot.nnz + self.cold.nnz)

    def lookup(self, ids: torch.Tensor, *, rows_of=None) -> torch.Tensor:
        """Rows ``ids``: each id's row of the hot or the cold part, read with ``rows_of(part, part_ids)`` (default
        :func:`lookup_rows`; :func:`hf_sparse.ops.lookup_rows` passes itself, so quantised parts run our kernels)."""
        rows_of = rows_of or lookup_rows
        ids = ids.to(torch.int64)
        hot_ids = self.hot_ids.to(torch.int64)
        pos = torch.searchsorted(hot_ids, ids)
        is_hot = hot_ids[pos.clamp(max=hot_ids.numel() - 1)] == ids
        out_hot = rows_of(self.hot, pos[is_hot])
        out_cold = rows_of(self.cold, (ids - pos)[~is_hot])
        dtype = torch.promote_types(out_hot.dtype, out_cold.dtype)
        out = torch.empty(ids.numel(), self.shape[1], dtype=dtype, device=ids.device)
        out = out.index_put((torch.nonzero(is_hot).squeeze(1),), out_hot.to(dtype))
        return out.index_put((torch.nonzero(~is_hot).squeeze(1),), out_cold.to(dtype))

    def to_dense(self) -> torch.Tensor:
        return self.lookup(torch.arange(self.shape[0], device=self.hot_ids.device))

    def tensors(self):
        return {
            "hot_ids": self.hot_ids,
            **{f"hot_{k}": v for k, v in self.hot.tensors().items()},
            **{f"cold_{k}": v for k, v in self.cold.tensors().items()},
        }

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "hot": self.hot.params(), "cold": self.cold.params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        check_params(cls.name, params, {"hot", "cold"})
        parts = {}
        for part in ("hot", "cold"):
            inner = params[part]
            if not isinstance(inner, dict) or inner.get("format") in (None, "hot") or inner["format"] not in FORMATS:
                raise FormatError(f"hot: params[{part!r}] must describe a (non-hot) registered format, got {inner!r}.")
            try:
                own = {k: v for k, v in tensors.items() if k != "hot_ids"}  # "hot_ids" is not the hot part's
                parts[part] = FORMATS.get(inner["format"]).from_tensors(
                    _nested(f"{part}_", own), inner, validate=validate
                )
            except FormatError as exc:
                raise FormatError(f"hot: the {part} rows: {exc}") from None
        unknown = sorted(set(tensors) - {"hot_ids"} - {k for k in tensors if k.startswith(("hot_", "cold_"))})
        if unknown:
            raise FormatError(f"hot: unknown tensors {unknown}.")
        return cls(tensors["hot_ids"], parts["hot"], parts["cold"], params["shape"], validate=validate)

    def validate(self) -> None:
        rows, cols = self.shape
        check_tensor(self.name, "hot_ids", self.hot_ids, dtypes=(torch.int32,))
        h = int(self.hot_ids.numel())
        if tuple(self.hot.shape) != (h, cols) or tuple(self.cold.shape) != (rows - h, cols):
            raise FormatError(
                f"hot: {h} hot ids need a hot part of shape {(h, cols)} and a cold part of {(rows - h, cols)}, got "
                f"{tuple(self.hot.shape)} and {tuple(self.cold.shape)}."
            )
        if self.hot_ids.device.type != "meta" and h:
            wide = self.hot_ids.to(torch.int64)
            if int(wide[0]) < 0 or int(wide[-1]) >= rows or (h > 1 and bool((wide[1:] <= wide[:-1]).any())):
                raise FormatError(f"hot: hot_ids must be strictly increasing ids in [0, {rows}).")
        self.hot.validate()
        self.cold.validate()
